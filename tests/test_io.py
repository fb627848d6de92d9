"""Tests of phasetorch.io (images, measurement files, JSON) and phasetorch.phantoms (test objects, data/)."""

import json
from pathlib import Path
import math

import pytest
import torch
from torchvision.io import write_jpeg, write_png

from phasetorch import io as pio
from phasetorch.physics import CodedDiffraction, GaussianMeasurement
from phasetorch.phantoms import complex_object, make_bundled_data, shepp_logan


def _ramp(h=20, w=30):
    return (torch.arange(h * w, dtype=torch.float32).reshape(h, w) / (h * w - 1))


# ------------------------------------------------------------------------------------ images
def test_png_roundtrip_keeps_values_to_8_bits(tmp_path):
    img = _ramp()
    path = pio.save_image(img, tmp_path / "a.png", normalise=False)
    back = pio.load_image(path)
    assert back.shape == (20, 30) and back.dtype == torch.float32
    assert (back - img).abs().max() <= 0.5 / 255 + 1e-6


def test_save_image_normalises_min_max_and_takes_modulus_of_complex(tmp_path):
    x = 3.0 + 2.0 * _ramp()
    back = pio.load_image(pio.save_image(x, tmp_path / "n.png"))
    assert back.min() == 0.0 and back.max() == 1.0
    z = torch.polar(_ramp() + 0.5, torch.full((20, 30), 2.0))
    u = pio.to_uint8(z, normalise=False)
    assert u.shape == (1, 20, 30)
    assert torch.equal(u, pio.to_uint8((_ramp() + 0.5).clamp(max=1.0), normalise=False))


def test_load_image_square_crop_and_resize(tmp_path):
    path = pio.save_image(_ramp(40, 60), tmp_path / "r.png", normalise=False)
    sq = pio.load_image(path, size=16)
    assert sq.shape == (16, 16)
    # the centre crop drops the 10 leftmost and 10 rightmost columns: the ramp's extremes are gone
    full = pio.load_image(path, size=(16, 24))
    assert full.shape == (16, 24)
    assert sq.min() > full.min() and sq.max() < full.max()
    assert 0.0 <= float(sq.min()) and float(sq.max()) <= 1.0


def test_load_image_reads_rgb_jpeg_as_gray(tmp_path):
    rgb = torch.zeros(3, 32, 32, dtype=torch.uint8)
    rgb[0] = 200  # pure red: gray ≈ 0.299·200
    write_jpeg(rgb, str(tmp_path / "c.jpg"), quality=95)
    g = pio.load_image(tmp_path / "c.jpg")
    assert g.shape == (32, 32)
    assert abs(float(g.mean()) - 0.299 * 200 / 255) < 0.03


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pio.load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_text("this is not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        pio.load_image(bad)
    with pytest.raises(ValueError, match="directory"):
        pio.load_image(tmp_path)
    good = pio.save_image(_ramp(), tmp_path / "g.png")
    with pytest.raises(ValueError, match="size"):
        pio.load_image(good, size=0)


def test_save_grid_lays_tiles_side_by_side(tmp_path):
    tiles = [_ramp(10, 12), torch.ones(10, 12), torch.zeros(10, 12)]
    path = pio.save_grid(tiles, tmp_path / "grid.png", padding=2)
    g = pio.load_image(path)
    assert g.shape == (10 + 4, 3 * 12 + 4 * 2)
    big = pio.load_image(pio.save_grid(tiles, tmp_path / "big.png", padding=2, scale=3))
    assert big.shape == (30 + 4, 3 * 36 + 4 * 2)
    assert torch.equal(big[2:32:3, 2:38:3], g[2:12, 2:14])  # pixel replication of the first tile
    with pytest.raises(ValueError, match="scale"):
        pio.save_grid(tiles, tmp_path / "bad.png", scale=0)


def test_load_signal_pt_tensor_dict_and_complex_resize(tmp_path):
    z = complex_object(0.5 + 0.5 * _ramp(16, 16), _ramp(16, 16).flip(0))
    torch.save({"x": z}, tmp_path / "obj.pt")
    back = pio.load_signal(tmp_path / "obj.pt")
    assert back.dtype == torch.complex64 and torch.equal(back, z)
    small = pio.load_signal(tmp_path / "obj.pt", size=8)
    assert small.shape == (8, 8) and small.is_complex()
    # modulus and phase are resized separately: both stay within the original ranges
    assert float(small.abs().min()) >= 0.5 - 1e-4 and float(small.abs().max()) <= 1.0 + 1e-4
    assert float(torch.angle(small).min()) >= -1e-4 and float(torch.angle(small).max()) <= math.pi + 1e-4
    torch.save(torch.ones(4, 4, dtype=torch.int64), tmp_path / "int.pt")
    with pytest.raises(ValueError, match="floating or complex"):
        pio.load_signal(tmp_path / "int.pt")


# ------------------------------------------------------------------------------------ measurements
def test_measurements_roundtrip_with_operator(tmp_path):
    op = CodedDiffraction((6, 5), 3, seed=1)
    x = torch.randn(2, 6, 5, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    y = op(x)
    support = torch.ones(6, 5, dtype=torch.bool)
    path = pio.save_measurements(tmp_path / "m.pt", y, x_true=x, support=support, nonnegative=True,
                                 meta={"model": "cdp", "photons": float("inf")})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == pio.MEASUREMENTS_FORMAT and raw["version"] == pio.MEASUREMENTS_VERSION
    d = pio.load_measurements(path, operator=op.double())
    assert d["y"].dtype == torch.float64 and torch.allclose(d["y"], y.double())
    assert d["x_true"].dtype == torch.complex128 and torch.allclose(d["x_true"], x.to(torch.complex128))
    assert d["support"].dtype == torch.bool and d["nonnegative"] is True
    assert d["meta"] == {"model": "cdp", "photons": "inf"}   # one JSON convention: ±inf as "inf"/"-inf", NaN as null


def test_measurements_accept_plain_dict_and_bare_tensor(tmp_path):
    y = torch.rand(4, 7)
    torch.save({"y": y}, tmp_path / "plain.pt")
    torch.save(y, tmp_path / "bare.pt")
    for name in ("plain.pt", "bare.pt"):
        d = pio.load_measurements(tmp_path / name)
        assert torch.equal(d["y"], y) and d["x_true"] is None and d["support"] is None and d["meta"] == {}


def test_measurements_errors(tmp_path):
    op = GaussianMeasurement(5, 12, seed=0)
    torch.save({"y": torch.rand(11)}, tmp_path / "short.pt")
    with pytest.raises(ValueError, match="do not match the operator"):
        pio.load_measurements(tmp_path / "short.pt", operator=op)
    torch.save({"y": torch.tensor([1.0, float("nan")])}, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="NaN"):
        pio.load_measurements(tmp_path / "nan.pt")
    torch.save({"format": "something.else", "y": torch.rand(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="format"):
        pio.load_measurements(tmp_path / "other.pt")
    torch.save({"x": torch.rand(3)}, tmp_path / "noy.pt")
    with pytest.raises(ValueError, match="key 'y'"):
        pio.load_measurements(tmp_path / "noy.pt")
    (tmp_path / "text.pt").write_text("not torch")
    with pytest.raises(ValueError, match="cannot read measurements"):
        pio.load_measurements(tmp_path / "text.pt")
    with pytest.raises(FileNotFoundError):
        pio.load_measurements(tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="real floating-point"):
        pio.save_measurements(tmp_path / "c.pt", torch.ones(3, dtype=torch.complex64))


# ------------------------------------------------------------------------------------ JSON
def test_save_json_tensors_and_non_finite(tmp_path):
    path = pio.save_json({"a": torch.tensor([1.0, float("nan")]), "b": float("inf"), "c": (1, 2),
                          "d": torch.float32, "z": torch.tensor([1 + 2j])}, tmp_path / "x.json")
    data = json.loads(path.read_text())
    assert data == {"a": [1.0, None], "b": "inf", "c": [1, 2], "d": "float32", "z": {"real": [1.0], "imag": [2.0]}}
    assert pio.load_json(path) == data
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        pio.load_json(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------ phantoms and data
def test_shepp_logan_known_values():
    p = shepp_logan(101, dtype=torch.float64)
    assert p.shape == (101, 101) and float(p.min()) == 0.0 and float(p.max()) == 1.0
    assert float(p[50, 50]) == pytest.approx(0.2)   # centre: 1 − 0.8 (skull interior)
    assert float(p[5, 50]) == pytest.approx(1.0)    # y = 0.9: inside the skull, outside its interior
    assert float(p[0, 0]) == 0.0 and float(p[50, 0]) == 0.0
    # the two dark ventricles (A = −0.2) at x = ±0.22: 0.2 − 0.2 = 0
    assert float(p[50, 61]) == pytest.approx(0.0) and float(p[50, 39]) == pytest.approx(0.0)
    assert shepp_logan((30, 40)).shape == (30, 40)
    with pytest.raises(ValueError):
        shepp_logan(0)


def test_complex_object_modulus_and_phase():
    amp, ph = 0.5 + _ramp(8, 8), _ramp(8, 8)
    z = complex_object(amp, ph, phase_range=2.0)
    assert torch.allclose(z.abs(), amp) and torch.allclose(torch.angle(z), 2.0 * ph, atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        complex_object(amp, ph[:4])


def test_bundled_data_present_small_and_reproducible(tmp_path):
    total = 0
    for name in pio.BUNDLED:
        path = pio.bundled(name)
        assert path.parent == pio.DATA_DIR and pio.bundled(path.name) == path   # by key or by file name
        total += path.stat().st_size
    assert total < 5_000_000            # the images and object are ~75 kB; the ptychography set is 3.3 MB
    assert (pio.DATA_DIR / "README.md").is_file() and (pio.DATA_DIR / "LICENSE.tike").is_file()
    assert pio.DATA_DIR == Path(pio.__file__).resolve().parent / "data"       # package data, not the checkout
    assert torch.equal(pio.load_image(pio.bundled("shepp_logan")),
                       pio.load_image(pio.save_image(shepp_logan(256), tmp_path / "s.png", normalise=False)))
    hopper = pio.load_image(pio.bundled("grace_hopper"))
    assert hopper.shape == (256, 256) and 0.2 < float(hopper.mean()) < 0.8
    obj = pio.load_signal(pio.bundled("complex_object"))
    assert obj.shape == (64, 64) and obj.dtype == torch.complex64
    assert float(obj.abs().min()) >= 0.2 - 1e-6 and float(obj.abs().max()) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="unknown bundled"):
        pio.bundled("lena")


def test_make_bundled_data_regenerates_the_files(tmp_path):
    src = tmp_path / "src.png"
    write_png((_ramp(50, 40) * 255).round().to(torch.uint8)[None], str(src))
    paths = make_bundled_data(tmp_path / "data", hopper_jpg=src, size=32, object_size=16)
    assert pio.load_image(paths["grace_hopper"]).shape == (32, 32)
    assert torch.equal(pio.load_image(paths["shepp_logan"]),
                       pio.load_image(pio.save_image(shepp_logan(32), tmp_path / "ref.png", normalise=False)))
    obj = torch.load(paths["complex_object"], weights_only=True)
    assert obj["x"].shape == (16, 16) and obj["x"].is_complex() and "phase" in obj["description"]
