r"""Preprocessing functions T(y) of spectral initialization (one definition for the solvers and the theory).

The spectral estimator is the top eigenvector of D = (1/m) Σ_i T(y_i) a_i a_iᴴ. Every T below
acts on intensities **normalised per sample to mean 1**, ŷ_i = y_i / mean(y) (so for Gaussian
measurements ŷ is distributed like |⟨a, x*⟩|²/‖x*‖², the variable of the asymptotic theory).

=================  ================================================  ===============================================
name               T(ŷ)                                              paper
=================  ================================================  ===============================================
``identity``       ŷ                                                 Candès, Li, Soltanolkotabi 2015 (WF)
``trimmed``        ŷ · 1{ŷ ≤ α²}, α = 3                              Chen & Candès 2015 (truncated WF)
``clipped``        min(ŷ, t), t = 3                                  bounded variant (Lu & Li 2017 style)
``orthogonality``  1{ŷ_i among the ⌈m/6⌉ largest}                    Wang, Giannakis, Eldar 2017 (TAF)
``weighted``       ŷ^{γ/2} · 1{ŷ_i among the ⌊3m/13⌋ largest}, γ=½  Wang, Zhang, Giannakis, Akçakaya, Chen 2018 (RAF)
``mm``             (ŷ − 1)/(ŷ + √δ − 1)                              Mondelli & Montanari 2018
``optimal``        1 − 1/max(ŷ, ε), ε = 1e-3 real, 1e-2 complex      Luo, Alghamdi & Lu 2019
=================  ================================================  ===============================================

Noisy intensities may be ≤ 0: ``optimal`` floors ŷ at ε (so T ≥ 1 − 1/ε, never −∞ or NaN). The floor
depends on the field (``field=``; from ``op.is_complex`` in :func:`preprocess`): the rows with ŷ < ε set
the far negative end of D's spectrum (T down to 1 − 1/ε), whose length slows the Lanczos start, and
what flooring them costs in overlap depends on the law of ŷ near 0. For a real field (ŷ ~ χ²₁, density
∝ ŷ^{-1/2} at 0) ε = 1e-2 would cost 5·10⁻⁴ of ρ² at δ = 4 (1.6·10⁻³ at δ = 8), so it stays 1e-3;
for a complex field (ŷ ~ Exp(1)) ε = 1e-2 costs under 10⁻⁴ of ρ² (theory: 0.734482 vs 0.734490 at
δ = 4) and a third of the products on coded diffraction (``results/spectral_start.md``);
``mm`` is bounded on ŷ ≥ 0 and clamps ŷ at 0; the others are defined for any real ŷ.
A callable ``T(ŷ) -> tensor of the same shape`` may be passed wherever a name is accepted.

With ``op`` (:func:`preprocess`, :func:`normalise`) the mean is taken over all of the operator's
measurements (``op.measurement_mean``), and the rank-based ``orthogonality``/``weighted`` pick their
top fractions among all ``op.m`` of them: for a sharded operator (:mod:`phasetorch.physics.sharded`)
the normalised intensities are all-gathered (m numbers per sample, small next to A) and each process
keeps its part of the mask, which is then the single-process mask exactly.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

Preprocessing = Union[str, Callable[[torch.Tensor], torch.Tensor]]

TRIM_ALPHA = 3.0
CLIP_LEVEL = 3.0
OPTIMAL_FLOOR = 1e-3            # real fields
OPTIMAL_FLOOR_COMPLEX = 1e-2    # complex fields (module docstring)
FIELDS = ("real", "complex")
ORTHOGONALITY_FRACTION = 1.0 / 6.0
WEIGHTED_FRACTION = 3.0 / 13.0
WEIGHTED_GAMMA = 0.5

NAMES = ("identity", "trimmed", "clipped", "orthogonality", "weighted", "mm", "optimal")
RANK_BASED = ("orthogonality", "weighted")


def optimal_floor(field: str = "real") -> float:
    """ε of ``optimal``, T = 1 − 1/max(ŷ, ε), for a ``"real"`` or ``"complex"`` field (module docstring)."""
    if field not in FIELDS:
        raise ValueError(f"field must be 'real' or 'complex', got {field!r}")
    return OPTIMAL_FLOOR_COMPLEX if field == "complex" else OPTIMAL_FLOOR


def elementwise(preprocessing: Preprocessing, delta: Optional[float] = None,
                field: str = "real") -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """T as a function of the normalised intensity ŷ alone, or ``None`` for the rank-based ones.

    ``delta`` (= m/n) is needed by ``mm`` only, ``field`` by ``optimal`` only (its floor). Used by the
    asymptotic theory, which integrates T against the law of ŷ.
    """
    if callable(preprocessing):
        return preprocessing
    name = _check_name(preprocessing)
    if name == "identity":
        return lambda y: y
    if name == "trimmed":
        return lambda y: y * (y <= TRIM_ALPHA ** 2).to(y.dtype)
    if name == "clipped":
        return lambda y: torch.clamp(y, max=CLIP_LEVEL)
    if name == "mm":
        if delta is None:
            raise ValueError("preprocessing 'mm' needs delta = m/n")
        s = math.sqrt(delta)
        return lambda y: (y.clamp(min=0) - 1) / (y.clamp(min=0) + s - 1) if s >= 1 else _mm_small(y, s)
    if name == "optimal":
        eps = optimal_floor(field)
        return lambda y: 1 - 1 / torch.clamp(y, min=eps)
    return None


def _mm_small(y: torch.Tensor, s: float) -> torch.Tensor:
    # For δ < 1 the denominator ŷ + √δ − 1 vanishes at ŷ = 1 − √δ; keep T bounded there.
    y = y.clamp(min=1 - s + 1e-3)
    return (y - 1) / (y + s - 1)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"unknown preprocessing {name!r}; choose one of {', '.join(NAMES)} or pass a callable")
    return name


def normalise(y: torch.Tensor, event_dims: int = 1, op=None) -> torch.Tensor:
    """ŷ = y / mean(y) per sample (the mean over the last ``event_dims`` dimensions; with ``op``,
    ``op.measurement_mean``: over all of the operator's measurements)."""
    dims = tuple(range(y.dim() - event_dims, y.dim()))
    if op is None:
        mean = y.mean(dim=dims, keepdim=True)
    else:
        mean = op.measurement_mean(y).reshape(*y.shape[: y.dim() - event_dims], *([1] * event_dims))
    if not torch.isfinite(y).all():
        raise ValueError("intensities contain NaN or inf; clean the data before spectral initialization")
    if (mean <= 0).any():
        raise ValueError("a sample has mean intensity ≤ 0: there is no signal to initialise from")
    return y / mean


def _top_fraction_mask(y: torch.Tensor, count: int, event_dims: int) -> torch.Tensor:
    flat = y.reshape(*y.shape[: y.dim() - event_dims], -1)
    count = max(1, min(count, flat.shape[-1]))
    idx = flat.topk(count, dim=-1).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(y.shape)


def preprocess(y: torch.Tensor, preprocessing: Preprocessing = "optimal", delta: Optional[float] = None,
               event_dims: int = 1, op=None, field: Optional[str] = None) -> torch.Tensor:
    """T(ŷ) for raw intensities y of shape ``(*batch, *measurement_shape)``, per sample.

    ``event_dims`` is the number of trailing measurement dimensions (the rest are batch). ``op``
    (optional): the operator of y, whose means and order statistics cover all of its measurements
    (module docstring; needed for a sharded operator). ``field``: ``"real"`` or ``"complex"``
    measurements (the floor of ``optimal``); default ``"complex"`` when ``op.is_complex``, else ``"real"``.
    """
    if field is None:
        field = "complex" if op is not None and getattr(op, "is_complex", False) else "real"
    yn = normalise(y, event_dims, op)
    m = math.prod(y.shape[y.dim() - event_dims:]) if op is None else op.m
    if isinstance(preprocessing, str) and preprocessing in RANK_BASED:
        full = yn if op is None else op.gather_measurements(yn)
        if preprocessing == "orthogonality":
            mask = _top_fraction_mask(full, math.ceil(m * ORTHOGONALITY_FRACTION), event_dims)
            return (mask if op is None else op.local_measurements(mask)).to(yn.dtype)
        mask = _top_fraction_mask(full, math.floor(m * WEIGHTED_FRACTION), event_dims)
        mask = mask if op is None else op.local_measurements(mask)
        return yn.clamp(min=0).pow(WEIGHTED_GAMMA / 2) * mask.to(yn.dtype)
    T = elementwise(preprocessing, delta, field)(yn)
    if not isinstance(T, torch.Tensor) or T.shape != yn.shape:
        raise ValueError("a preprocessing callable must return a tensor of the same shape as its input")
    if not torch.isfinite(T).all():
        raise ValueError("preprocessing returned NaN or inf; make T finite on the data (e.g. floor small intensities)")
    return T
