r"""The algorithm registry of :func:`phasetorch.reconstruct`: one entry per named algorithm.

Each preset fixes the loss, the update, the default step and the default initialisation of its
paper. ``step=μ`` always means α = μ·s with s from the loss (1/‖x₀‖² for the intensity loss, 1
otherwise; see :mod:`phasetorch.optim.steps`).

========  ===========================================  ======================================  ==========================
name      loss / update                                default step                            default init (spectral T)
========  ===========================================  ======================================  ==========================
``wf``    intensity, gradient descent                  ramp min(1−e^{−t/330}, 0.2)/‖x₀‖²       ``identity``
``twf``   truncated Poisson (α_lb .3, α_ub 5, α_h 5)   0.2                                     ``trimmed``
``rwf``   amplitude                                    0.8                                     RWF truncation 1 < ŷ < 25
``taf``   truncated amplitude (γ = 0.7)                0.6 (real), 1 (complex)                 ``orthogonality``
``raf``   reweighted amplitude (β = 10 real, 5 cplx)   6 (real), 4 (complex)                   ``weighted``
``af``    amplitude                                    0.6 (real), 1 (complex)                 ``orthogonality``
``gs``    error reduction x ← Π_C(A⁺ P_M(Ax))          —                                       ``identity``
``hio``   Fienup HIO, β = 0.9                          —                                       random phases
``lbfgs`` amplitude, batched L-BFGS (memory 10)        Armijo from 1 (first step 0.5)          ``mm`` (Lanczos tol 0.1)
========  ===========================================  ======================================  ==========================

References: WF — Candès, Li & Soltanolkotabi, IEEE Trans. Inf. Theory 61 (2015); TWF — Chen &
Candès, Comm. Pure Appl. Math. 70 (2017); RWF — Zhang & Liang, NeurIPS 2016; TAF/AF — Wang,
Giannakis & Eldar, IEEE Trans. Inf. Theory 64 (2018) (μ = 0.6 is the paper's step for real data; at the
solution the complex amplitude loss has about half the real one's curvature — only the part of
a_iᴴh in phase with a_iᴴx counts — so complex data take μ = 1, solvephase's value: 80–88 iterations to 1e-6 at n = 256, m = 8n against 137–148 with 0.6, four seeds,
and 251–298 against 423–500 at m = 4n); RAF — Wang, Giannakis, Saad & Chen, IEEE
Trans. Signal Process. 66 (2018) (β = 10 as in the paper for real data, β = 5 for complex data as in
PhasePack; near the solution the weights are 1/(1+β), so the effective step is μ/(1+β) ≈ 0.55 (real)
and 0.67 (complex, the value solvephase uses), comparable to TAF's 0.6 — with μ = 2 the effective
step 0.18 makes RAF three times slower than TAF); GS — Gerchberg &
Saxton, Optik 35 (1972), with the spectral start of Netrapalli, Jain & Sanghavi (NeurIPS 2013);
HIO — Fienup, Appl. Opt. 21 (1982); L-BFGS — Liu & Nocedal, Math. Program. 45 (1989), on the
amplitude loss (chosen over the intensity loss: 22 instead of 35 iterations to 1e-6 at n = 256,
m = 8n), started from the Mondelli–Montanari ``mm`` spectral estimate (Mondelli & Montanari, Found.
Comput. Math. 19, 2019): cosine ≈ 0.88 at m = 8n for about 20 products with D, where the ``optimal``
T (Luo, Alghamdi & Lu, IEEE Trans. Signal Process. 67, 2019; cosine 0.96) needs about 6× as many
Lanczos products because its D has a wide negative spectrum — and L-BFGS then needs the same
number of iterations from either start. For the same reason the ``lbfgs`` preset stops Lanczos at
a residual of 10⁻¹·θ: at n = 1024, m = 8n that is 3 products with D instead of 8 (10⁻³) or 16
(10⁻⁶), and the early-stopped Krylov vector is no worse a start (cosine with x 0.896 against 0.886
for the converged eigenvector, three seeds); L-BFGS needs the same number of iterations from it
(complex Gaussian n = 256, m/n = 3, 4, 8, six seeds each, and CDP 96×96, L = 8, three seeds: equal
or fewer iterations and never a failure). Every other preset uses spectral_init's default 10⁻⁶
(``wf`` in particular, whose spectral start the DMFT theory describes). ``spectral_options``
overrides either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

import torch

from .. import losses as L

__all__ = ["Preset", "PRESETS", "get_preset", "rwf_truncation"]


def rwf_truncation(yhat: torch.Tensor) -> torch.Tensor:
    r"""RWF's truncated spectral weights T(ŷ) = ŷ·1{α_l² < ŷ < α_u²}, α_l = 1, α_u = 5.

    Zhang & Liang 2016 keep measurements with α_l λ₀ < √y_i < α_u λ₀, λ₀ an estimate of ‖x‖;
    with ŷ = y/mean(y) (mean(y) ≈ ‖x‖² in normalised units) that is 1 < ŷ < 25.
    """
    return yhat * ((yhat > 1.0) & (yhat < 25.0)).to(yhat.dtype)


rwf_truncation.__name__ = "rwf_truncation"


@dataclass(frozen=True)
class Preset:
    """One named algorithm: how to build its loss and update, and its defaults.

    ``options`` are the tunable hyper-parameters with their defaults (``options_complex``
    overrides for complex signals); :func:`phasetorch.reconstruct` accepts them as keyword arguments.
    """

    name: str
    family: str                      # "gradient", "lbfgs", "gs", "hio"
    title: str
    reference: str
    preprocessing: Union[str, Callable, None]
    init: str = "spectral"
    loss: Optional[str] = None       # a key of phasetorch.losses.LOSSES
    loss_options: tuple = ()         # names of options passed to the loss
    rule: str = "constant"           # "constant", "wf_ramp", "armijo" (L-BFGS: its line search)
    mu: float = 1.0
    mu_complex: Optional[float] = None
    options: Dict[str, Any] = field(default_factory=dict)
    options_complex: Dict[str, Any] = field(default_factory=dict)
    #: default keyword arguments of spectral_init for init="spectral" (user spectral_options override)
    spectral: Dict[str, Any] = field(default_factory=dict)

    def defaults(self, complex_signal: bool) -> Dict[str, Any]:
        out = dict(self.options)
        if complex_signal:
            out.update(self.options_complex)
        return out

    def step_mu(self, complex_signal: bool) -> float:
        return self.mu_complex if (complex_signal and self.mu_complex is not None) else self.mu

    def make_loss(self, op, l2: float, opts: Dict[str, Any]) -> L.PhaseRetrievalLoss:
        name = self.loss or "amplitude"
        kwargs = {k: opts[k] for k in self.loss_options if k in opts}
        if self.family == "lbfgs":
            name = opts.get("loss", name)
            if name not in ("amplitude", "intensity"):
                raise ValueError(f"lbfgs works on loss='amplitude' or loss='intensity', got {name!r}")
        return L.LOSSES[name](op, l2=l2, **kwargs)


PRESETS: Dict[str, Preset] = {p.name: p for p in (
    Preset("wf", "gradient", "Wirtinger flow",
           "Candès, Li & Soltanolkotabi, IEEE Trans. Inf. Theory 61 (2015)", "identity",
           loss="intensity", rule="wf_ramp", mu=0.2, options={"tau0": 330.0, "mu_max": 0.2}),
    Preset("twf", "gradient", "Truncated Wirtinger flow",
           "Chen & Candès, Comm. Pure Appl. Math. 70 (2017)", "trimmed",
           loss="poisson_truncated", loss_options=("alpha_lb", "alpha_ub", "alpha_h"), mu=0.2,
           options={"alpha_lb": 0.3, "alpha_ub": 5.0, "alpha_h": 5.0}),
    Preset("rwf", "gradient", "Reshaped Wirtinger flow",
           "Zhang & Liang, NeurIPS 2016", rwf_truncation, loss="amplitude", mu=0.8),
    Preset("taf", "gradient", "Truncated amplitude flow",
           "Wang, Giannakis & Eldar, IEEE Trans. Inf. Theory 64 (2018)", "orthogonality",
           loss="amplitude_truncated", loss_options=("gamma",), mu=0.6, mu_complex=1.0, options={"gamma": 0.7}),
    Preset("raf", "gradient", "Reweighted amplitude flow",
           "Wang, Giannakis, Saad & Chen, IEEE Trans. Signal Process. 66 (2018)", "weighted",
           loss="amplitude_reweighted", loss_options=("beta",), mu=6.0, mu_complex=4.0,
           options={"beta": 10.0}, options_complex={"beta": 5.0}),
    Preset("af", "gradient", "Amplitude flow",
           "Wang, Giannakis & Eldar, IEEE Trans. Inf. Theory 64 (2018)", "orthogonality",
           loss="amplitude", mu=0.6, mu_complex=1.0),
    Preset("gs", "gs", "Gerchberg–Saxton / error reduction",
           "Gerchberg & Saxton, Optik 35 (1972); Fienup, Appl. Opt. 21 (1982)", "identity",
           loss="amplitude", options={"cg_steps": 3}),
    Preset("hio", "hio", "Hybrid input–output",
           "Fienup, Appl. Opt. 21 (1982)", "identity", init="random",
           loss="amplitude", options={"beta": 0.9, "cg_steps": 3}),
    Preset("lbfgs", "lbfgs", "L-BFGS",
           "Liu & Nocedal, Math. Program. 45 (1989)", "mm",
           loss="amplitude", rule="armijo", mu=0.5, options={"memory": 10, "loss": "amplitude"},
           spectral={"tol": 1e-1}),
)}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (ValueError listing the choices otherwise)."""
    if not isinstance(name, str) or name.lower() not in PRESETS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name.lower()]
