r"""Counter-based Gaussian variates: Philox4x32-10 and an exactly specified Box–Muller transform.

Entry (i, k) of a Gaussian matrix is a pure function of (seed, i, k): no generator state, so a block
of rows can be generated anywhere (any block size, any shard, any device) and it is the same block.
``phasetorch.physics.GaussianMeasurement`` draws its matrix with :func:`gaussian_rows`; the CPU has
a compiled version of the same arithmetic (``phasetorch/csrc/fused_dense.c``, ``pt_gaussian``).

Definition (every step is an IEEE-754 basic operation — integer ops, +, −, ×, ÷, √ in float64 —
in a fixed order; the Philox words agree exactly everywhere, the float64 variates agree to the
rounding of √: the C kernel's is correctly rounded, torch's vectorised CPU sqrt can be one ulp off):

1. **Philox4x32-10** (Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2,
   3", SC'11) with key (k₀, k₁) = (seed mod 2³², ⌊seed/2³²⌋) and counter
   (c₀, c₁, c₂, c₃) = (j, i mod 2³², ⌊i/2³²⌋, 0) for pair j of row i gives 4 words w₀..w₃.
2. a = w₀·2²¹ + ⌊w₁/2¹¹⌋, b = w₂·2²¹ + ⌊w₃/2¹¹⌋ (53-bit integers); u₁ = (a + 1)·2⁻⁵³ ∈ (0, 1].
3. ln u₁ = E·ln2_hi + (E·ln2_lo + ln m) with u₁ = m·2^E, m ∈ [√½, √2) (exact), and
   ln m = 2s·Σ_{k≤10} s^{2k}/(2k+1), s = (m − 1)/(m + 1) (|s| ≤ 0.172: truncation < 1e-17).
4. The angle 2πb·2⁻⁵³ = (π/2)(q + r): q = ⌊(b + 2⁵⁰)/2⁵¹⌋ (its quadrant), r = (b − q·2⁵¹)·2⁻⁵¹ ∈ [−½, ½)
   (exact); α = r·π/2 and sin α, cos α by their Taylor series to α¹⁷, α¹⁸ (|α| ≤ π/4: < 1e-17).
5. (z₀, z₁) = √(−2 ln u₁)·(cos θ, sin θ): two independent N(0, 1) variates (Box & Muller 1958).
   Complex entry (i, j) = (z₀ + i z₁)/√2; real entries (i, 2j), (i, 2j + 1) = z₀, z₁.

The variates are float64 (53-bit uniforms; accuracy of the transform ≈ 1e-16 relative) and are
rounded once to the requested dtype.
"""

from __future__ import annotations

import math
from typing import Tuple, Union

import torch

__all__ = ["philox4x32", "normal_pairs", "gaussian_rows_torch", "M0", "M1", "W0", "W1"]

M0, M1 = 0xD2511F53, 0xCD9E8D57          # Philox4x32 multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85          # Weyl key increments
ROUNDS = 10
MASK32 = 0xFFFFFFFF

#: the constants of the transform (the C kernel computes the same expressions in double)
LN2_HI = 6.93147180369123816490e-01      # fdlibm's split of ln 2 (ln2_hi has 32 bits: E·ln2_hi is exact)
LN2_LO = 1.90821492927058770002e-10
SQRT_HALF = math.sqrt(0.5)
PI_HALF = math.pi / 2
LOG_COEFFS = tuple(1.0 / (2 * k + 1) for k in range(11))                                  # Σ s^{2k}/(2k+1)
SIN_COEFFS = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(9))            # α^{2k+1}
COS_COEFFS = tuple((-1.0) ** k / math.factorial(2 * k) for k in range(10))               # α^{2k}


def _mulhilo(c: torch.Tensor, mult: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) words of the 64-bit product c·mult, c < 2³² held in int64 (16-bit split: no overflow)."""
    p1 = c * (mult & 0xFFFF)
    p2 = c * (mult >> 16)
    t = p1 + ((p2 & 0xFFFF) << 16)
    return (p2 >> 16) + (t >> 32), t & MASK32


def philox4x32(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, key: int):
    """Philox4x32-10 of the counters (int64 tensors of values < 2³², broadcastable) under the 64-bit
    ``key``; returns the four output words as int64 tensors."""
    k0, k1 = key & MASK32, (key >> 32) & MASK32
    for _ in range(ROUNDS):
        hi0, lo0 = _mulhilo(c0, M0)
        hi1, lo1 = _mulhilo(c2, M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return c0, c1, c2, c3


def _poly(x: torch.Tensor, coeffs) -> torch.Tensor:
    """Σ coeffs[k] x^k by Horner's rule, highest power first (the C kernel's order)."""
    p = torch.full_like(x, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        p = p * x + c
    return p


def normal_pairs(w0, w1, w2, w3) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two float64 N(0, 1) variates (z₀, z₁) of the Philox words (steps 2–5 of the module doc)."""
    a = (w0 << 21) | (w1 >> 11)
    b = (w2 << 21) | (w3 >> 11)
    m, e = torch.frexp((a + 1).to(torch.float64))             # a + 1 = m·2^e, m ∈ [½, 1): exact
    low = m < SQRT_HALF
    m = torch.where(low, m + m, m)
    E = (e - low.to(e.dtype) - 53).to(torch.float64)          # u₁ = m·2^E
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    log_m = (s + s) * _poly(s2, LOG_COEFFS)
    log_u = E * LN2_HI + (E * LN2_LO + log_m)
    rad = torch.sqrt(-2.0 * log_u)
    q = (b + (1 << 50)) >> 51
    r = (b - (q << 51)).to(torch.float64) * (2.0 ** -51)
    alpha = r * PI_HALF
    a2 = alpha * alpha
    sa = alpha * _poly(a2, SIN_COEFFS)
    ca = _poly(a2, COS_COEFFS)
    q = q & 3
    sin_t = torch.where(q == 0, sa, torch.where(q == 1, ca, torch.where(q == 2, -sa, -ca)))
    cos_t = torch.where(q == 0, ca, torch.where(q == 1, -sa, torch.where(q == 2, -ca, sa)))
    return rad * cos_t, rad * sin_t


def gaussian_rows_torch(seed: int, row0: int, rows: int, n: int, is_complex: bool, dtype: torch.dtype,
                        device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Rows ``row0 .. row0 + rows − 1`` of the Gaussian matrix of ``seed`` (n columns; complex entries
    (z₀ + i z₁)/√2, real entries N(0, 1)) computed with torch ops on ``device``; ``dtype`` is the real
    dtype of the result (float32 or float64; a complex result has the matching complex dtype)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    pairs = n if is_complex else (n + 1) // 2
    i = torch.arange(row0, row0 + rows, dtype=torch.int64, device=device).unsqueeze(1)
    j = torch.arange(pairs, dtype=torch.int64, device=device).unsqueeze(0)
    w = philox4x32(j.expand(rows, pairs), i & MASK32, (i >> 32) & MASK32, torch.zeros_like(i), int(seed))
    z0, z1 = normal_pairs(*w)
    if is_complex:
        out = torch.stack((z0 * SQRT_HALF, z1 * SQRT_HALF), -1).to(dtype)
        return torch.view_as_complex(out)
    return torch.stack((z0, z1), -1).reshape(rows, 2 * pairs)[:, :n].to(dtype).contiguous()
