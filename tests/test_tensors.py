"""phasetorch.tensors: the one implementation of the small conventions."""

import json
import math

import pytest
import torch

from phasetorch import tensors as T
from phasetorch.theory import Prediction


def test_abs2_inner_dot_norm2():
    z = torch.tensor([[1 + 2j, 3 - 1j], [0j, 2j]], dtype=torch.complex128)
    assert torch.equal(T.abs2(z), torch.tensor([[5.0, 10.0], [0.0, 4.0]], dtype=torch.float64))   # exact: no sqrt
    w = torch.tensor([[2 - 1j, 1j], [1 + 0j, 1 + 1j]], dtype=torch.complex128)
    torch.testing.assert_close(T.inner(z, w, 1), (z.conj() * w).sum(-1))
    torch.testing.assert_close(T.dot(z, w), (z.conj() * w).sum(-1).real)
    torch.testing.assert_close(T.norm2(z), z.abs().square().sum(-1))
    img = torch.randn(2, 3, 4, dtype=torch.float64)
    assert T.inner(img, img, 2).shape == (2,) and T.sum_dims(img, 2).shape == (2,)


def test_validators_refuse_what_would_go_wrong_silently():
    with pytest.raises(ValueError, match="shape must be an int or a sequence"):
        T.as_shape("34")
    with pytest.raises(ValueError, match="int"):
        T.check_int(2.7, "m", 1)
    with pytest.raises(ValueError, match="int"):
        T.check_int(True, "m", 1)
    with pytest.raises(ValueError, match="≥ 1"):
        T.check_int(0, "block_rows", 1)
    assert T.check_int(torch.tensor(3), "k", 1) == 3
    with pytest.raises(ValueError, match="finite"):
        T.check_number(float("nan"), "l2", low=0.0)
    with pytest.raises(ValueError, match="≥ 0"):
        T.check_number(-1, "l2", low=0.0)
    with pytest.raises(ValueError, match="> 0"):
        T.check_number(0, "step", low=0.0, strict=True)
    for half in (torch.float16, torch.bfloat16, "float16"):
        with pytest.raises(ValueError, match="half precision"):
            T.parse_dtype(half)
    assert T.parse_dtype(torch.complex128) == torch.float64 and T.parse_dtype("float32") == torch.float32


def test_mean_se_one_rule():
    m, se = T.mean_se(torch.tensor([1.0, 3.0]))
    assert float(m) == 2.0 and float(se) == pytest.approx(1.0)
    m, se = T.mean_se(torch.tensor([5.0]))
    assert float(m) == 5.0 and math.isnan(float(se))          # unknown, never 0
    m, se = T.mean_se(torch.ones(4, 3), dim=0)
    assert m.shape == (3,) and torch.equal(se, torch.zeros(3, dtype=torch.float64))


def test_json_round_trip_is_strict_and_lossless():
    obj = {"a": torch.tensor([1.0, float("nan"), float("inf"), -float("inf")]), "d": torch.float32, "z": 1 + 0j}
    text = json.dumps(T.to_jsonable(obj), allow_nan=False)
    back = json.loads(text)
    assert back["a"] == [1.0, None, "inf", "-inf"] and back["d"] == "float32"
    vals = T.floats_from_json(back["a"])
    assert vals[0] == 1.0 and math.isnan(vals[1]) and vals[2] == math.inf and vals[3] == -math.inf
    with pytest.raises(ValueError, match="expected a number"):
        T.from_json_float("abc")


def test_prediction_with_nan_is_strict_json(tmp_path):
    pred = Prediction(iteration=torch.arange(2), step=torch.zeros(2, dtype=torch.float64),
                      per_replicate={"overlap": torch.tensor([[0.5, float("nan")]], dtype=torch.float64)},
                      kernels={}, params={"delta": 4.0})
    path = tmp_path / "p.json"
    pred.to_json(path)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    back = Prediction.from_json(path)
    assert torch.equal(back.per_replicate["overlap"].isnan(), pred.per_replicate["overlap"].isnan())
    assert float(back.per_replicate["overlap"][0, 0]) == 0.5


def test_abs2_norm2_dot_accept_conjugate_views():
    from phasetorch.tensors import abs2, dot, norm2
    z = torch.randn(3, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    zc = z.conj()                                    # a lazy conjugate view (e.g. an ensemble's adjoint)
    assert zc.is_conj()
    torch.testing.assert_close(abs2(zc), z.abs() ** 2, rtol=1e-14, atol=0)
    torch.testing.assert_close(norm2(zc), (z.abs() ** 2).sum(1), rtol=1e-14, atol=0)
    torch.testing.assert_close(dot(zc, z), (z * z).real.sum(1), rtol=1e-13, atol=1e-13)


def test_scratch_is_per_owner_thread_shape_and_cpu_only():
    """A work buffer is reused for the same owner/name/shape/dtype, replaced otherwise, never shared
    between owners or threads, and absent off the CPU or while a gradient is recorded."""
    import threading

    class Owner:
        pass

    a, b = Owner(), Owner()
    x = torch.zeros(3, dtype=torch.complex64)
    w = T.scratch(a, "work", (4, 5), x)
    assert w.shape == (4, 5) and w.dtype == torch.complex64 and w.device.type == "cpu"
    assert T.scratch(a, "work", (4, 5), x).data_ptr() == w.data_ptr()          # reused
    assert T.scratch(b, "work", (4, 5), x).data_ptr() != w.data_ptr()          # per owner
    assert T.scratch(a, "other", (4, 5), x).data_ptr() != w.data_ptr()         # per name
    w64 = T.scratch(a, "work", (4, 5), x.to(torch.complex128))
    assert w64.dtype == torch.complex128                                      # replaced on a dtype change
    assert T.scratch(a, "work", (2, 5), x).shape == (2, 5)                    # and on a shape change
    seen = []
    t = threading.Thread(target=lambda: seen.append(T.scratch(a, "work", (2, 5), x).data_ptr()))
    t.start(); t.join()
    assert seen[0] != T.scratch(a, "work", (2, 5), x).data_ptr()              # per thread
    assert T.scratch(a, "work", (2, 5), torch.zeros(3, device="meta")) is None
    leaf = torch.zeros(3, requires_grad=True)
    assert T.scratch(a, "work", (2, 5), x, leaf) is None                      # autograd records
    with torch.no_grad():
        assert T.scratch(a, "work", (2, 5), x, leaf) is not None
    import gc
    import weakref
    ref = weakref.ref(T.scratch(b, "work", (64,), x))
    del b
    gc.collect()
    assert ref() is None                                                      # freed with its owner
