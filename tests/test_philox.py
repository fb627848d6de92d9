"""Counter-based Gaussian matrices (phasetorch.philox, the compiled pt_gaussian): known-answer Philox
vectors, the C and torch paths against each other, block/shard independence, and the distribution."""

import math
import os

import pytest
import torch

from phasetorch.philox import gaussian_rows_torch, normal_pairs, philox4x32
from phasetorch.physics import GaussianMeasurement, kernels
from phasetorch.physics.gaussian import gaussian_rows


def _words(c, key):
    z = [torch.tensor([v], dtype=torch.int64) for v in c]
    return [int(w) for w in philox4x32(*z, key)]


def test_philox4x32_10_known_answers():
    # Random123's kat_vectors for philox4x32-10 (counter c0..c3, key k0 + 2^32 k1)
    assert _words((0, 0, 0, 0), 0) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    f = 0xFFFFFFFF
    assert _words((f, f, f, f), (f << 32) | f) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert _words((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0x299F31D0 << 32) | 0xA4093822) == \
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_transform_is_box_muller_to_rounding():
    j = torch.arange(200_000)
    w = philox4x32(j, torch.full_like(j, 3), torch.zeros_like(j), torch.zeros_like(j), 99)
    z0, z1 = normal_pairs(*w)
    a = (w[0] << 21) | (w[1] >> 11)
    b = (w[2] << 21) | (w[3] >> 11)
    u1, u2 = (a + 1).double() * 2.0 ** -53, b.double() * 2.0 ** -53
    r = torch.sqrt(-2 * torch.log(u1))
    assert (z0 - r * torch.cos(2 * math.pi * u2)).abs().max() < 1e-13
    assert (z1 - r * torch.sin(2 * math.pi * u2)).abs().max() < 1e-13


@pytest.mark.skipif(not kernels.available(), reason="no C compiler: the torch path is the only one")
@pytest.mark.parametrize("is_complex", [True, False])
@pytest.mark.parametrize("row0,rows,n", [(0, 3, 5), (7, 40, 513), ((1 << 33) + 5, 4, 1000)])
def test_compiled_rows_equal_the_torch_definition(is_complex, row0, rows, n):
    for dt in (torch.float64, torch.float32):
        c = kernels.gaussian_rows(2 ** 40 + 17, row0, rows, n, is_complex, dt)
        t = gaussian_rows_torch(2 ** 40 + 17, row0, rows, n, is_complex, dt)
        assert c.shape == t.shape == (rows, n) and c.dtype == t.dtype
        # the same Philox words and the same IEEE operations; torch's CPU sqrt may be 1 ulp off
        tol = 1e-15 if dt == torch.float64 else 1e-7
        assert ((c - t).abs() <= tol * t.abs().clamp_min(1.0)).all()
        if dt == torch.float32:
            assert (c == t).float().mean() > 0.999


def test_matrix_independent_of_blocks_storage_and_kernel_switch():
    stored = GaussianMeasurement(40, 300, seed=5, dtype=torch.float64).matrix()
    for block_rows in (1, 17, 4096):
        streamed = GaussianMeasurement(40, 300, seed=5, streamed=True, block_rows=block_rows, dtype=torch.float64)
        assert torch.equal(streamed.matrix(), stored)
        x = torch.randn(2, 40, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(streamed(x), (x @ stored.T).abs() ** 2, rtol=1e-12)
    # the rows of a sub-range are the rows of the whole
    assert torch.equal(gaussian_rows(5, 100, 50, 40, True, torch.float64), stored[100:150])
    old = os.environ.get(kernels.ENV_SWITCH)
    os.environ[kernels.ENV_SWITCH] = "0"
    try:
        plain = GaussianMeasurement(40, 300, seed=5, dtype=torch.float64).matrix()
    finally:
        if old is None:
            os.environ.pop(kernels.ENV_SWITCH, None)
        else:
            os.environ[kernels.ENV_SWITCH] = old
    assert torch.allclose(plain, stored, rtol=1e-15, atol=1e-15)
    assert not torch.equal(GaussianMeasurement(40, 300, seed=6, dtype=torch.float64).matrix(), stored)


def test_entries_are_standard_gaussian():
    A = gaussian_rows(11, 0, 400, 1000, True, torch.float64)
    g = torch.view_as_real(A).reshape(-1) * math.sqrt(2.0)          # 800 000 N(0, 1) variates
    N = g.numel()
    assert abs(float(g.mean())) < 5 / math.sqrt(N)
    assert abs(float(g.var()) - 1) < 5 * math.sqrt(2 / N)
    assert abs(float((g ** 4).mean()) - 3) < 5 * math.sqrt(96 / N)
    # Kolmogorov–Smirnov distance to Φ (critical value at level 1e-4: ≈ 2.0/√N)
    s, _ = torch.sort(g)
    cdf = 0.5 * (1 + torch.erf(s / math.sqrt(2)))
    k = torch.arange(1, N + 1, dtype=torch.float64) / N
    assert float(torch.maximum((k - cdf).abs(), (cdf - (k - 1 / N)).abs()).max()) < 2.0 / math.sqrt(N)
    # real and imaginary parts, neighbouring columns and rows are uncorrelated; E|A_ij|² = 1
    re, im = A.real.reshape(-1), A.imag.reshape(-1)
    assert abs(float((re * im).mean())) < 5 / math.sqrt(2 * N)
    assert abs(float((A[:, 1:] * A[:, :-1].conj()).mean().abs())) < 5 / math.sqrt(A.numel())
    assert abs(float((A[1:] * A[:-1].conj()).mean().abs())) < 5 / math.sqrt(A.numel())
    assert abs(float(A.abs().square().mean()) - 1) < 5 / math.sqrt(A.numel())
    R = gaussian_rows(11, 0, 300, 7, False, torch.float64)           # odd n: the last pair half-used
    assert R.shape == (300, 7) and abs(float(R.square().mean()) - 1) < 0.15


def test_a_streamed_block_too_large_for_memory_is_refused_clearly():
    op = GaussianMeasurement(10 ** 7, 10 ** 9, streamed=True, seed=0)          # construction stores nothing
    with pytest.raises(ValueError, match="block_rows"):
        op(torch.zeros(10 ** 7, dtype=torch.complex64))
