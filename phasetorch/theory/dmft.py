r"""Dynamical mean-field theory (DMFT) of spectral-initialised gradient descent.

Chen & Shen, "Learning single index model with gradient descent: spectral initialization and
precise asymptotics" (arXiv 2509.23527, 2025); equations as derived and checked in phasetorch's
theory notes (theory.md §4). Proportional limit n, d → ∞ with δ = n/d (library: δ = m/n, m
measurements of n unknowns), rows a_i ~ N(0, I_d), ‖x*‖ = 1, s_i = ⟨a_i, x*⟩, y_i = f(s_i, ε_i).

Gradient descent on L(x) = (1/n) Σ ℓ(⟨a_i,x⟩; y_i) + (λ/2)‖x‖²,  x_{t+1} = x_t − η_t ∇L(x_t),
from the spectral start x₀ = c₀ v̂ (v̂ the top eigenvector of D = (1/n) Σ T(ŷ_i) a_i a_iᵀ) is
described by two scalar processes coupled through kernels:

**Sample side** (one per data point). Gaussian (S, P, U₀, U₁, …), E S² = E P² = 1, E SP = ρ,
E S U_t = m(t), E P U_t = c_V(t), E U_t U_s = C(t, s), U₀ = c₀P; Y = f(S, ε);
τ(Y) = T(Ŷ)/(λ* − T(Ŷ)), Ŷ = Y/E Y:

    r_t = U_t + Σ_{s<t} R_x(t,s) g(r_s; Y) + R_x(t,★) τ(Y) P,        r₀ = c₀(1 + τ(Y)) P.

**Parameter side** (one per coordinate, in closed form because the update is linear in x):
X_t = a_t X* + b_t W★ + Σ_{s<t} K(t,s) W_s, (W★, W₀, W₁, …) Gaussian with covariance
Σ_W = δ C_g, C_g(s,s') = E g_s g_s', C_g(★,s) = E τ P g_s, C_g(★,★) = E τ² P² = (1 − ρ²)/δ (used
exactly, so that E V̂² = E P² = 1; its Monte-Carlo value is reported in ``checks["v_norm"]``), and

    a_{t+1} = (1−η_tλ) a_t − η_t [Σ_{s≤t} R_g(t,s) a_s + ρ R_g(t,★) + μ(t)],    a₀ = c₀ρ,
    b_{t+1} = (1−η_tλ) b_t − η_t [Σ_{s≤t} R_g(t,s) b_s + R_g(t,★)],              b₀ = c₀,
    K(t+1,s') = (1−η_tλ) K(t,s') − η_t [Σ_{s≤t} R_g(t,s) K(s,s') + 1{s'=t}/δ],

with R_x(t,s) = K(t,s), R_x(t,★) = b_t, m(t) = a_t, C(t,s) = a_t a_s + β_tᵀ Σ_W β_s
(β_t = (b_t, K(t,·))), c_V(t) = ρ a_t + β_tᵀ Σ_W e★, and the responses
R_g(t,s) = E g'(r_t) ∂r_t/∂U_s, R_g(t,★) = E g'(r_t) ∂r_t/∂P, μ(t) = E ∂g(r_t)/∂S|_Y. μ is taken
in the Stein form μ(t) = E[S g_t] − ρ R_g(t,★) − Σ_s m(s) R_g(t,s) (valid for non-smooth T) or
pathwise (``mu="pathwise"``).

**Solver.** One causal forward pass over t (no damped global iteration): at each t the field U_t
is drawn on a persistent Gaussian basis (S, G, ξ₁, ξ₂, …), each new field adding one fresh
direction whose coefficients solve a pivoted triangular (Cholesky) system of the degenerate
covariance of (S, P, U₁, …, U_t) (float64; a vanishing innovation drops its direction); the
responses are exact pathwise Jacobians: the row ∂r_t/∂U_· solves the unit-triangular system
Jᵀ(I − K diag g') = e_tᵀ by recursive back-substitution (O(N t²) time, O(N t) memory per step,
no stored Jacobians); ∂r_t/∂P and ∂r_t/∂S are forward-propagated columns. All T×T algebra is
float64; per-sample arrays use ``dtype``. Independent Monte-Carlo populations ("replicates") run
as a batch dimension; means and standard errors over replicates are reported.

**Cost.** N = ``samples`` is the Monte-Carlo population **per replicate**; R = ``replicates``.
Time ≈ R·N·T³/6 multiply-adds for the responses plus O(R·N·T²); memory ≈ 28·R·N·T bytes (float32,
pathwise μ; 24 with Stein): e.g. 2.2 GB for R = 8, N = 1e5, T = 100. Measured on the shared
2-core box (1 thread): T = 100, N = 1e5, R = 1 in 4.6–14 s, R = 8 in about 1–2 min.

The same machinery runs a data-independent warm start (``init="warm"``: x₀ = c(ρ₀x* + √(1−ρ₀²)w),
w independent, i.e. τ ≡ 0 and Var W★ = 1 − ρ₀²) and a normalised power-iteration pre-phase
(``init="power"``: K steps x_{k+1} ∝ (D + cI) x_k from a warm start, then GD) — the independent
cross-check of the closed-form spectral terms suggested in theory.md §4.

Complex fields are not derived (holomorphic and antiholomorphic responses): ``field="complex"``
raises.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import torch

from ..errors import DivergenceError
from .prediction import Prediction

Tensor = torch.Tensor

STABILITY_SIGMAS = 5.0
PIVOT_TOL = 1e-11
RESPONSE_LEAF = 4
SMOOTH_PREPROCESSING = ("optimal", "mm", "clipped")     # Lipschitz T: pathwise μ is valid


# ---------------------------------------------------------------------------------------------
# models: link f, loss ℓ and its derivatives
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SingleIndexModel:
    r"""A single-index model y = f(s, ε) with a per-sample loss ℓ(r; y).

    ``link(s, eps)`` → y, ``link_ds(s, eps)`` → ∂y/∂s, ``loss(r, y)`` → ℓ, ``g`` = ∂ℓ/∂r,
    ``g_r`` = ∂g/∂r, ``g_y`` = ∂g/∂y, ``mean_y`` = E y (the spectral preprocessing sees
    ŷ = y / E y), ``stability`` (``"quartic"`` or ``"quadratic"``) selects the step-size rule.
    """

    name: str
    link: Callable[[Tensor, Tensor], Tensor]
    link_ds: Callable[[Tensor, Tensor], Tensor]
    loss: Callable[[Tensor, Tensor], Tensor]
    g: Callable[[Tensor, Tensor], Tensor]
    g_r: Callable[[Tensor, Tensor], Tensor]
    g_y: Callable[[Tensor, Tensor], Tensor]
    mean_y: float = 1.0
    noise: float = 0.0
    stability: str = "quartic"

    def safe_step(self, delta: float, r_max: float, l2: float) -> float:
        """Largest step η the explicit-Euler stability rule allows (theory.md §4 pitfall).

        Quartic loss: a residual r takes an Euler step on a cubic and diverges once
        (η/δ) r² ≳ 2, so η < 2δ / r_max². Square loss: η (λ_max(AᵀA/n) + λ) < 2 with the
        Marchenko–Pastur edge λ_max = (1 + 1/√δ)².
        """
        if self.stability == "quartic":
            return 2.0 * delta / max(r_max, 1e-12) ** 2
        return 2.0 / ((1.0 + 1.0 / math.sqrt(delta)) ** 2 + l2)


def _check_noise(noise: float) -> float:
    sigma = float(noise)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"noise is the standard deviation σ ≥ 0 of the additive Gaussian noise, got {noise}")
    return sigma


def phase_retrieval(noise: float = 0.0) -> SingleIndexModel:
    r"""Real phase retrieval y = s² + σε with the intensity loss ℓ = (r² − y)²/4 (Wirtinger flow).

    g = (r² − y) r, g' = 3r² − y, ∂_y g = −r; E y = 1 (‖x*‖ = 1, E ε = 0).
    """
    sigma = _check_noise(noise)
    return SingleIndexModel(
        name="phase_retrieval", noise=sigma, mean_y=1.0, stability="quartic",
        link=lambda s, e: s * s + sigma * e, link_ds=lambda s, e: 2 * s,
        loss=lambda r, y: 0.25 * (r * r - y) ** 2, g=lambda r, y: (r * r - y) * r,
        g_r=lambda r, y: 3 * r * r - y, g_y=lambda r, y: -r)


def linear_regression(noise: float = 0.0) -> SingleIndexModel:
    r"""Linear regression y = s + σε with the square loss ℓ = (r − y)²/2 (g = r − y, g' = 1, ∂_y g = −1).

    E y = 0, so no spectral start is defined: use ``init="warm"``.
    """
    sigma = _check_noise(noise)
    return SingleIndexModel(
        name="linear_regression", noise=sigma, mean_y=0.0, stability="quadratic",
        link=lambda s, e: s + sigma * e, link_ds=lambda s, e: torch.ones_like(s),
        loss=lambda r, y: 0.5 * (r - y) ** 2, g=lambda r, y: r - y,
        g_r=lambda r, y: torch.ones_like(r), g_y=lambda r, y: -torch.ones_like(r))


# ---------------------------------------------------------------------------------------------
# step sizes
# ---------------------------------------------------------------------------------------------
def _steps(step, schedule, steps: int) -> torch.Tensor:
    """μ_t for t = 0..steps: μ_t is the step of the update x_{t−1} → x_t (μ_0 = 0), float64.

    The library's convention (:mod:`phasetorch.optim.steps`): ``schedule(t)`` is called with the
    index t = 1, 2, … of the new iterate; neither ``step`` nor ``schedule``: the ``wf`` preset's
    Candès ramp μ_t = min(1 − e^{−t/τ₀}, μ_max).
    """
    if step is not None and schedule is not None:
        raise ValueError("pass either step= (constant μ) or schedule= (callable t ↦ μ_t), not both")
    mus = torch.zeros(steps + 1, dtype=torch.float64)
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(float(step)) \
                or float(step) <= 0:
            raise ValueError(f"step must be a finite number μ > 0 (got {step!r}); it is μ in units of 1/‖x₀‖²")
        mus[1:] = float(step)
        return mus
    if schedule is None:
        from ..optim.presets import PRESETS
        from ..optim.steps import WFRamp

        opts = PRESETS["wf"].options
        schedule = WFRamp(float(opts["tau0"]), float(opts["mu_max"])).schedule
    if not callable(schedule):
        raise ValueError(f"schedule must be a callable t ↦ μ_t, got {type(schedule).__name__}")
    for t in range(1, steps + 1):
        mu = schedule(t)
        mu = float(mu.item() if isinstance(mu, torch.Tensor) else mu)
        if not math.isfinite(mu) or mu < 0:
            raise ValueError(f"schedule({t}) returned {mu}; a step size must be finite and ≥ 0")
        mus[t] = mu
    return mus


def _replicate_seeds(seed: int, replicates: int) -> list:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return [int(s) for s in torch.randint(0, 2 ** 62, (replicates,), generator=g)]


# ---------------------------------------------------------------------------------------------
# the solver
# ---------------------------------------------------------------------------------------------
@contextmanager
def _cpu_threads(threads: Optional[int], device) -> Iterator[None]:
    """Run the block with ``threads`` CPU threads (restored afterwards); a no-op on CUDA or for None."""
    if threads is None or (device is not None and torch.device(device).type != "cpu"):
        yield
        return
    if int(threads) < 1:
        raise ValueError(f"threads must be a positive integer or None (got {threads})")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def solve_dmft(delta: float, *, steps: int, model: Optional[SingleIndexModel] = None,
               lam_star: Optional[float] = None, rho: Optional[float] = None,
               T: Optional[Callable[[Tensor], Tensor]] = None,
               step: Optional[float] = None, schedule: Optional[Callable[[int], float]] = None, l2: float = 0.0,
               init: str = "spectral", init_overlap: Optional[float] = None, init_norm: float = 1.0,
               power_steps: int = 50, power_shift: float = 0.0, mu: str = "auto",
               samples: int = 100_000, replicates: int = 8, seed: int = 0, seeds: Optional[Sequence[int]] = None,
               device: Union[str, torch.device, None] = None, dtype: torch.dtype = torch.float32,
               chunk_size: Optional[int] = None, progress: bool = True, params: Optional[dict] = None,
               check_stability: bool = True, threads: Optional[int] = 1) -> Prediction:
    r"""Solve the discrete-time DMFT of gradient descent by one causal Monte-Carlo pass.

    The lower-level entry point of :func:`dmft`: the spectral quantities are passed explicitly.

    Args:
        delta: δ = n/d (library: m/n, measurements per unknown).
        steps: number of GD iterations T (the prediction covers t = 0..T).
        model: a :class:`SingleIndexModel` (default :func:`phase_retrieval` ()).
        lam_star, rho: the auxiliary root λ* of δE[(S² − 1)τ] = 1 and the limiting overlap ρ of
            the spectral estimator (theory.md §2); needed for ``init="spectral"``.
        T: the preprocessing T(ŷ) (a function of ŷ = y/E y on tensors); needed for ``"spectral"``
            and ``"power"``.
        step / schedule / l2: the GD step μ (library units μ/‖x₀‖², so η = μ/c₀²), a callable
            t ↦ μ_t for the update x_{t−1} → x_t (t = 1, 2, …, the library's convention), or neither
            (the ``wf`` preset's Candès ramp min(1 − e^{−t/330}, 0.2));
            λ of the ridge term (λ/2)‖x‖².
        init: ``"spectral"`` (closed-form spectral start, x₀ = c₀ v̂), ``"warm"`` (data-independent
            x₀ = c(ρ₀ x* + √(1−ρ₀²) w)), or ``"power"`` (``power_steps`` of normalised power
            iteration x ← (D + c I)x/‖·‖, c = ``power_shift``, from the warm start, then GD).
        init_overlap: ρ₀ of the warm start (``"warm"``, ``"power"``; default 0.5 for power).
        init_norm: c₀ = ‖x₀‖ (1 for the spectral start since √(mean y) → ‖x*‖ = 1).
        mu: ``"stein"`` (exact in expectation, valid for non-smooth T), ``"pathwise"`` (∂r/∂S
            propagated along each path; lower variance, needs T and the link Lipschitz), or
            ``"auto"`` (default: pathwise for the warm start, where T plays no role, else Stein).
        samples: N, Monte-Carlo samples **per replicate**; replicates: independent populations.
        seed / seeds: ``seed`` derives one seed per replicate; ``seeds`` gives them explicitly
            (replicate r of a batch equals a one-replicate run with ``seeds=[seeds[r]]``).
        device: where the populations live (default CPU); random numbers are always drawn on CPU
            from ``torch.Generator`` s, so CPU and CUDA runs see the same samples.
        dtype: per-sample precision (float32 default); kernels and T×T algebra are float64.
        chunk_size: samples per chunk of the Jacobian back-substitution (default: all on CUDA; on
            CPU as many as keep its (replicates, T + 1, chunk) buffer under 2²⁶ numbers).
        threads: CPU threads for the solve (``torch.set_num_threads``, restored afterwards);
            default 1 — the solve is thousands of memory-bound kernels, a second thread gains
            little, and on a shared or oversubscribed machine OpenMP barriers made 2 threads up to
            15× slower than 1 (measured on a 2-core box). ``None`` keeps torch's setting.
    """
    with _cpu_threads(threads, device):
        model = model if model is not None else phase_retrieval()
        delta = float(delta)
        if not (delta > 0 and math.isfinite(delta)):
            raise ValueError(f"delta must be a positive number (got {delta})")
        steps = int(steps)
        if steps < 0:
            raise ValueError(f"steps must be ≥ 0 (got {steps})")
        if init not in ("spectral", "warm", "power"):
            raise ValueError(f"init must be 'spectral', 'warm' or 'power' (got {init!r})")
        if mu not in ("stein", "pathwise", "auto"):
            raise ValueError(f"mu must be 'stein', 'pathwise' or 'auto' (got {mu!r})")
        if mu == "auto":                              # T is not differentiated in a warm start
            mu = "pathwise" if init == "warm" else "stein"
        if dtype not in (torch.float32, torch.float64):
            raise ValueError("dtype must be torch.float32 or torch.float64")
        samples, replicates = int(samples), int(replicates)
        if samples < 2 or replicates < 1:
            raise ValueError("need samples ≥ 2 and replicates ≥ 1")
        l2 = float(l2)
        c0 = float(init_norm)
        if not c0 > 0:
            raise ValueError("init_norm must be positive")
        if init == "spectral":
            if lam_star is None or rho is None or T is None:
                raise ValueError("init='spectral' needs lam_star, rho and T (see phasetorch.theory.spectral_limits)")
            rho_p = float(rho)
            if not 0 < rho_p <= 1:
                raise ValueError(f"the spectral overlap rho must be in (0, 1] (got {rho_p}); rho = 0 means δ is "
                                 "below the spectral threshold and the spectral start carries no information")
        else:
            default = 0.5 if init == "power" else None
            rho_p = init_overlap if init_overlap is not None else default
            if rho_p is None:
                raise ValueError("init='warm' needs init_overlap=ρ₀ (the overlap of x₀ with x*)")
            rho_p = float(rho_p)
            if not 0 <= rho_p <= 1:
                raise ValueError(f"init_overlap must be in [0, 1] (got {rho_p})")
            if init == "power":
                if T is None:
                    raise ValueError("init='power' needs the preprocessing T")
                if rho_p == 0:
                    raise ValueError("a power iteration from a start with zero overlap keeps zero overlap in the "
                                     "proportional limit; give init_overlap > 0")
        if (init in ("spectral", "power")) and model.mean_y <= 0:
            raise ValueError(f"model {model.name!r} has E y = {model.mean_y} ≤ 0: no spectral start; use init='warm'")
        K0 = int(power_steps) if init == "power" else 0
        if init == "power" and K0 < 1:
            raise ValueError("init='power' needs power_steps ≥ 1")

        mus = _steps(step, schedule, steps)
        etas = mus / c0 ** 2                                    # η_t = μ_t / ‖x₀‖²
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if seeds is None:
            seeds = _replicate_seeds(seed, replicates)
        seeds = [int(s) for s in seeds]
        R, N = len(seeds), samples
        if chunk_size is None:
            # one chunk unless the back-substitution buffer (R, t + 1, chunk) would exceed 2²⁶ numbers
            chunk_size = N if dev.type == "cuda" else max(4096, (1 << 26) // (R * (K0 + steps + 1)))
        chunk_size = max(1, min(int(chunk_size), N))
        chunk_size = -(-N // (-(-N // chunk_size)))          # equal chunks
        gens = []
        for s in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(s)
            gens.append(g)

        def randn() -> Tensor:
            return torch.stack([torch.randn(N, generator=g, dtype=torch.float64) for g in gens]).to(device=dev, dtype=dtype)

        f64 = dict(dtype=torch.float64, device=dev)
        # -------------------------------------------------------------- populations
        S, G, eps = randn(), randn(), randn()
        Y = model.link(S, eps)
        P = rho_p * S + math.sqrt(max(1.0 - rho_p ** 2, 0.0)) * G
        fS = model.link_ds(S, eps) if mu == "pathwise" else None
        Tvals = dTvals = None
        if init in ("spectral", "power"):
            Yhat = (Y / model.mean_y).detach()
            if mu == "pathwise":
                Yg = Yhat.clone().requires_grad_(True)
                Tg = T(Yg)
                dTvals = torch.autograd.grad(Tg.sum(), Yg, allow_unused=True)[0]
                dTvals = torch.zeros_like(Yhat) if dTvals is None else dTvals.detach() / model.mean_y  # dT/dY
                Tvals = Tg.detach()
            else:
                Tvals = T(Yhat)
            if not isinstance(Tvals, Tensor) or Tvals.shape != Yhat.shape:
                raise ValueError("T must map a tensor of normalised intensities to a tensor of the same shape")
            if not torch.isfinite(Tvals).all():
                raise ValueError("T(ŷ) is not finite on the population; floor small intensities in T")
        if init == "spectral":
            ls = float(lam_star)
            if not ls > float(Tvals.max()):
                raise ValueError(f"lam_star = {ls} must exceed sup T = {float(Tvals.max()):.6g} (it is the root of "
                                 "δE[(S²−1)T/(λ−T)] = 1 above the support of T)")
            tau = Tvals / (ls - Tvals)
            dtau = dTvals * ls / (ls - Tvals) ** 2 if mu == "pathwise" else None
        else:
            tau = torch.zeros_like(S)
            dtau = torch.zeros_like(S) if mu == "pathwise" else None
        tauP = tau * P

        # stability rule (theory.md §4): r_max ≈ 5 c₀ max(1 + τ) must stay below √(2δ/η)
        r_max = STABILITY_SIGMAS * c0 * float((1 + tau).abs().max())
        eta_safe = model.safe_step(delta, r_max, l2)
        if check_stability and steps > 0 and float(etas.max()) > eta_safe:
            warnings.warn(
                f"step μ = {float(mus.max()):.4g} exceeds the stability limit of the explicit gradient step: "
                f"residuals up to r_max ≈ {r_max:.3g} diverge once (η/δ) r² ≳ 2; the largest safe step is about "
                f"{eta_safe * c0 ** 2:.4g}. Simulations with this step are expected to blow up, and so may the DMFT.",
                RuntimeWarning, stacklevel=4)

        # -------------------------------------------------------------- state
        TT = K0 + steps                               # total time steps of the combined process
        nb = TT + 2                                   # basis columns: S, G, ξ_1..ξ_TT
        B = torch.empty(R, nb, N, dtype=dtype, device=dev)
        B[:, 0], B[:, 1] = S, G
        # histories: g(r_s) also in float64 (its Gram matrix is Σ_W, which must stay positive semi-definite
        # to ~1e-16 for the degenerate factorisation), g'(r_s), and the channels the memory sums need:
        nh = 3 if mu == "pathwise" else 2         # H channels: g, g'·∂r/∂P, [g'·∂r/∂S + ∂_y g·f_S]
        Gh = torch.zeros(R, TT + 1, N, dtype=torch.float64, device=dev)
        GPh = torch.zeros(R, TT + 1, N, dtype=dtype, device=dev)
        H = torch.zeros(R, TT + 1, nh, N, dtype=dtype, device=dev)
        tauP64 = tauP.to(torch.float64)
        xbuf = torch.empty(R, TT + 1, chunk_size, dtype=dtype, device=dev)     # back-substitution buffer

        a = torch.zeros(R, TT + 2, **f64)
        b = torch.zeros(R, TT + 2, **f64)
        Km = torch.zeros(R, TT + 2, TT + 1, **f64)      # K(t, s), s < t
        SW = torch.zeros(R, TT + 2, TT + 2, **f64)      # Σ_W, index 0 = ★, s + 1 = W_s
        L = torch.zeros(R, TT + 1, nb, **f64)           # U_t = L[t] · basis
        Rg = torch.zeros(R, TT + 1, TT + 1, **f64)
        Rgs = torch.zeros(R, TT + 1, **f64)
        muv = torch.zeros(R, TT + 1, **f64)
        qv = torch.zeros(R, TT + 1, **f64)
        lossv = torch.zeros(R, TT + 1, **f64)
        gnorm = torch.zeros(R, TT + 1, **f64)
        gsig = torch.zeros(R, TT + 1, **f64)
        giter = torch.zeros(R, TT + 1, **f64)
        dropped = torch.zeros(R, TT + 1, dtype=torch.bool, device=dev)
        worst = torch.zeros(R, **f64)                  # largest relative negative innovation (diagnostic)

        a[:, 0], b[:, 0] = c0 * rho_p, c0
        sq = math.sqrt(max(1.0 - rho_p ** 2, 0.0))
        L[:, 0, 0], L[:, 0, 1] = c0 * rho_p, c0 * sq
        # Var W★ = δE[τ²P²] = 1 − ρ² (spectral; theory.md §4) and 1 − ρ₀² (warm) — the exact value, so
        # that the parameter side (E V̂² = ρ² + Var W★) matches the sample side (E P² = 1) and the
        # Gaussian factorisation below is consistent; the Monte-Carlo value is reported as a check.
        SW[:, 0, 0] = 1.0 - rho_p ** 2
        checks = {}
        if init == "spectral":
            checks["v_norm"] = rho_p ** 2 + delta * (tauP * tauP).to(torch.float64).mean(dim=1)   # → 1
            checks["tilt_equation"] = delta * ((S * S - 1) * tau).to(torch.float64).mean(dim=1)  # → 1 (λ* root)
            onept = (1 + tau) * P
            checks["rayleigh"] = (Tvals * onept * onept).to(torch.float64).mean(dim=1)     # → λ₁(D)

        inv_delta = 1.0 / delta

        def grad_fns(t: int):
            if t < K0:                                   # power phase: g = T(ŷ) r
                return (lambda r: Tvals * r), (lambda r: Tvals), (lambda r: dTvals * r if dTvals is not None else None)
            return (lambda r: model.g(r, Y)), (lambda r: model.g_r(r, Y)), (lambda r: model.g_y(r, Y))

        def coeff_norm2(ca: Tensor, cb: Tensor, cK: Tensor, upto: int) -> Tensor:
            """‖c_a X* + c_b W★ + Σ_{s<upto} c_K[s] W_s‖² (batched over replicates)."""
            beta = torch.cat([cb[:, None], cK[:, :upto]], dim=1)
            Sw = SW[:, :upto + 1, :upto + 1]
            return ca * ca + torch.einsum("ri,rij,rj->r", beta, Sw, beta)

        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=TT + 1, desc="DMFT", disable=not progress, leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None

        for t in range(TT + 1):
            gfn, gpfn, gyfn = grad_fns(t)
            bt = b[:, t:t + 1].to(dtype)
            # ---- sample side: field, residual and the forward-propagated Jacobian columns
            U = torch.bmm(L[:, t:t + 1, :t + 2].to(dtype), B[:, :t + 2]).squeeze(1)
            r = U.addcmul_(bt, tauP)
            JP = bt * tau
            if t > 0:
                mem = torch.bmm(Km[:, t:t + 1, :t].to(dtype), H[:, :t].reshape(R, t, nh * N)).view(R, nh, N)
                r += mem[:, 0]
                JP += mem[:, 1]
            gt, gpt = gfn(r), gpfn(r)
            Gh[:, t], GPh[:, t] = gt, gpt
            H[:, t, 0] = gt
            H[:, t, 1] = gpt * JP
            if mu == "pathwise":
                JS = bt * dtau * fS * P
                if t > 0:
                    JS += mem[:, 2]
                gy = gyfn(r)
                H[:, t, 2] = gpt * JS + (gy * fS if gy is not None else 0)
            # ---- sample averages (float32 cascade sums are accurate to ~1e-7, far below Monte-Carlo error)
            avg = torch.stack([H[:, t, 1], S * gt, model.loss(r, Y), r * gt], dim=1).mean(dim=2)
            avg = avg.to(torch.float64)
            Rgs[:, t] = avg[:, 0]
            if init == "power" and t == K0:          # Rayleigh quotient x_Kᵀ D x_K/‖x_K‖² of the last power iterate
                checks["rayleigh"] = (Tvals * r * r).mean(dim=1).to(torch.float64) / c0 ** 2
            # ---- responses R_g(t, s), s ≤ t: back-substitution for row t of (I − K diag g')⁻¹
            Rg[:, t, :t + 1] = _response_row(Km, GPh, gpt, t, xbuf)
            if mu == "pathwise":
                muv[:, t] = H[:, t, 2].mean(dim=1).to(torch.float64)
            else:
                muv[:, t] = avg[:, 1] - rho_p * Rgs[:, t] - (L[:, :t + 1, 0] * Rg[:, t, :t + 1]).sum(dim=1)
            # ---- noise covariance Σ_W(·, t)
            g64 = Gh[:, t]
            SW[:, 0, t + 1] = (delta / N) * (tauP64 * g64).sum(dim=1)
            SW[:, 1:t + 2, t + 1] = (delta / N) * torch.bmm(Gh[:, :t + 1], g64[:, :, None]).squeeze(2)
            SW[:, t + 1, :t + 2] = SW[:, :t + 2, t + 1]
            # ---- observables at t
            qv[:, t] = coeff_norm2(a[:, t], b[:, t], Km[:, t], t)
            lossv[:, t] = avg[:, 2] + 0.5 * l2 * qv[:, t]
            gsig[:, t] = avg[:, 1] + l2 * a[:, t]
            giter[:, t] = avg[:, 3] + l2 * qv[:, t]
            # ---- parameter side: Γ_t = Σ_s R_g(t,s) X_s + R_g(t,★) V̂ + μ(t) X* + W_t/δ
            w = Rg[:, t, :t + 1]
            ga = (w * a[:, :t + 1]).sum(1) + rho_p * Rgs[:, t] + muv[:, t]
            gb = (w * b[:, :t + 1]).sum(1) + Rgs[:, t]
            gK = torch.bmm(w[:, None], Km[:, :t + 1, :t + 1]).squeeze(1)
            gK[:, t] += inv_delta
            if t < K0:                                                     # power step x ← (D + cI)x / ‖·‖
                na = power_shift * a[:, t] + ga
                nbv = power_shift * b[:, t] + gb
                nK = power_shift * Km[:, t, :t + 1] + gK
                scale = c0 / coeff_norm2(na, nbv, nK, t + 1).clamp(min=1e-300).sqrt()
                a[:, t + 1], b[:, t + 1], Km[:, t + 1, :t + 1] = na * scale, nbv * scale, nK * scale[:, None]
            else:
                Ga = l2 * a[:, t] + ga
                Gb = l2 * b[:, t] + gb
                GK = l2 * Km[:, t, :t + 1] + gK
                gnorm[:, t] = coeff_norm2(Ga, Gb, GK, t + 1).clamp(min=0).sqrt()
                eta = float(etas[t - K0 + 1]) if t < TT else 0.0      # the last row only needs ∇L(x_T)
                a[:, t + 1] = a[:, t] - eta * Ga
                b[:, t + 1] = b[:, t] - eta * Gb
                Km[:, t + 1, :t + 1] = Km[:, t, :t + 1] - eta * GK
            finite = bool(torch.isfinite(qv[:, t]).all() and torch.isfinite(lossv[:, t]).all()
                          and torch.isfinite(a[:, t + 1]).all() and torch.isfinite(Rg[:, t, :t + 1]).all())
            if not finite:
                if bar is not None:
                    bar.close()
                it = t - K0
                where = f"GD iteration {it}" if it >= 0 else f"power-iteration step {t}"
                msg = (f"the DMFT produced non-finite values at {where}: the step is unstable"
                       + (f" (μ = {float(mus.max()):.4g}; the stability rule suggests μ ≤ {eta_safe * c0 ** 2:.4g})"
                          if it >= 0 else ""))
                raise DivergenceError(msg, algorithm="dmft", iteration=it, step=float(mus.max()))
            if t == TT:
                break
            # ---- next field U_{t+1}: pivoted triangular solve on the basis
            worst = torch.maximum(worst, _extend_basis(L, a, b, Km, SW, dropped, t, rho_p, sq))
            B[:, t + 2] = randn()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.update(1)
            bar.close()

        # -------------------------------------------------------------- assemble (GD phase only)
        sl = slice(K0, TT + 1)
        n_t = steps + 1
        beta = torch.cat([b[:, :TT + 1, None], Km[:, :TT + 1, :]], dim=2)               # (R, TT+1, TT+2)
        Cfull = a[:, :TT + 1, None] * a[:, None, :TT + 1] + beta @ SW[:, :TT + 2, :TT + 2] @ beta.transpose(1, 2)
        cV = rho_p * a[:, :TT + 1] + (beta @ SW[:, :TT + 2, 0:1]).squeeze(2)
        gd_idx = torch.tensor([0] + list(range(K0 + 1, TT + 2)), device=dev)      # ★, W_K0..W_TT
        kernels = {
            "C": Cfull[:, sl, sl], "R_x": Km[:, sl, sl], "K": Km[:, sl, sl], "R_g": Rg[:, sl, sl],
            "R_g_star": Rgs[:, sl], "mu": muv[:, sl], "a": a[:, sl], "b": b[:, sl], "c_V": cV[:, sl],
            "C_g": SW[:, gd_idx][:, :, gd_idx] / delta,
        }
        info = dict(delta=delta, step=(float(step) if step is not None else None),
                    schedule=(None if schedule is None and step is not None else
                              ("wf_ramp" if schedule is None else getattr(schedule, "__name__", "callable"))),
                    l2=l2, noise=model.noise, model=model.name, samples=N, replicates=R, seed=int(seed), seeds=seeds,
                    rho=(float(rho) if rho is not None else None), lam_star=(float(lam_star) if lam_star is not None else None),
                    init=init, init_overlap=(rho_p if init != "spectral" else None), init_norm=c0,
                    power_steps=K0, power_shift=float(power_shift) if init == "power" else None, mu=mu,
                    dtype=str(dtype).replace("torch.", ""), safe_step=eta_safe * c0 ** 2,
                    dropped_directions=int(dropped.sum()), factorisation_defect=float(worst.max()))
        if params:
            info.update(params)
        return Prediction.from_replicates(
            iteration=torch.arange(n_t), step=etas, m=a[:, sl], q=qv[:, sl], loss=lossv[:, sl], grad_norm=gnorm[:, sl],
            grad_signal=gsig[:, sl], grad_iterate=giter[:, sl], kernels=kernels, params=info, checks=checks)


def _response_row(Km: Tensor, GPh: Tensor, gpt: Tensor, t: int, buf: Tensor, leaf: int = RESPONSE_LEAF) -> Tensor:
    r"""R_g(t, k) = E[g'(r_t) ∂r_t/∂U_k], k = 0..t, from exact pathwise Jacobians.

    ∂r_t/∂U_k = 1{k=t} + Σ_{s<t} K(t,s) g'(r_s) ∂r_s/∂U_k, i.e. J = (I − K D)⁻¹ per sample with
    D = diag g'. Row t of J solves xᵀ(I − K D) = e_tᵀ: x_t = 1 and, for k = t−1, …, 0,
    x_k = g'(r_k) Σ_{j=k+1}^{t} x_j K(j,k). Recursive (divide-and-conquer) back-substitution: solve
    the upper half of an index range, add its contribution to the lower half with one matrix
    product, recurse — the same O(N t²) work as the plain loop but mostly in matrix products, with
    O(N t log t) memory traffic. Chunked over samples: ``buf`` is a reused (R, ≥ t + 1, chunk) buffer.
    """
    R, _, N = GPh.shape
    dtype = GPh.dtype
    if t == 0:
        return gpt.to(torch.float64).mean(dim=1)[:, None]
    KT = Km[:, :t + 1, :t + 1].transpose(1, 2).to(dtype).contiguous()     # KT[r, k, j] = K(j, k)
    out = torch.zeros(R, t + 1, dtype=torch.float64, device=GPh.device)
    chunk = buf.shape[2]
    for n0 in range(0, N, chunk):
        n1 = min(N, n0 + chunk)
        gp = GPh[:, :, n0:n1]
        xs = buf[:, :t + 1, :n1 - n0]
        xs[:, t] = 1
        xs[:, :t] = KT[:, :t, t, None]                  # contribution of x_t = 1

        def solve(lo: int, hi: int) -> None:             # x_lo..x_{hi−1}; xs holds Σ_{j ≥ hi} x_j K(j,·)
            if hi - lo <= leaf:
                for k in range(hi - 1, lo - 1, -1):
                    if k + 1 < hi:
                        xs[:, k:k + 1].baddbmm_(KT[:, k:k + 1, k + 1:hi], xs[:, k + 1:hi])
                    xs[:, k].mul_(gp[:, k])
                return
            mid = (lo + hi) // 2
            solve(mid, hi)
            xs[:, lo:mid].baddbmm_(KT[:, lo:mid, mid:hi], xs[:, mid:hi])
            solve(lo, mid)

        solve(0, t)
        out += torch.bmm(xs, gpt[:, n0:n1, None]).squeeze(2).to(torch.float64)
    return out / N


def _extend_basis(L: Tensor, a: Tensor, b: Tensor, Km: Tensor, SW: Tensor, dropped: Tensor, t: int,
                  rho_p: float, sq: float) -> Tensor:
    r"""Coefficients of U_{t+1} on the basis (S, G, ξ₁, …, ξ_{t+1}).

    The known fields (S, P, U₁, …, U_t) have lower-triangular coefficient rows (U₀ = c₀P is
    redundant and left out); U_{t+1} must have covariances (m(t+1), c_V(t+1), C(t+1, 1..t)) with
    them. Solve the triangular system (a pivoted Cholesky step: rows whose own innovation was
    dropped are skipped), then put the remaining variance C(t+1,t+1) − ‖l‖² on the fresh
    direction ξ_{t+1} — or drop it when it is below PIVOT_TOL·C(t+1,t+1). Returns the relative
    negative part of that variance (≈ 1e-16 when Σ_W is positive semi-definite; reported as
    ``params["factorisation_defect"]``).
    """
    R = a.shape[0]
    n = t + 2                                                     # known variables and basis columns
    beta_new = torch.cat([b[:, t + 1:t + 2], Km[:, t + 1, :t + 1]], dim=1)       # (R, t+2)
    Sw = SW[:, :t + 2, :t + 2]
    beta_old = torch.cat([b[:, 1:t + 1, None], Km[:, 1:t + 1, :t + 1]], dim=2)   # (R, t, t+2): X_1..X_t
    swb = torch.bmm(Sw, beta_new[:, :, None]).squeeze(2)
    C_new_old = a[:, 1:t + 1] * a[:, t + 1:t + 2] + torch.bmm(beta_old, swb[:, :, None]).squeeze(2)
    cV = rho_p * a[:, t + 1] + swb[:, 0]
    C_tt = a[:, t + 1] ** 2 + (beta_new * swb).sum(1)
    target = torch.cat([a[:, t + 1:t + 2], cV[:, None], C_new_old], dim=1)     # (R, t+2)
    M = torch.zeros(R, n, n, dtype=torch.float64, device=a.device)
    M[:, 0, 0] = 1.0
    M[:, 1, 0], M[:, 1, 1] = rho_p, sq
    if t > 0:
        M[:, 2:, :] = L[:, 1:t + 1, :n]
    drop = torch.zeros(R, n, dtype=torch.bool, device=a.device)
    drop[:, 1] = sq <= math.sqrt(PIVOT_TOL)
    if t > 0:
        drop[:, 2:] = dropped[:, 1:t + 1]
    eye = torch.eye(n, dtype=torch.float64, device=a.device).expand(R, n, n)
    M = torch.where(drop[:, :, None], eye, M)
    target = torch.where(drop, torch.zeros_like(target), target)
    l = torch.linalg.solve_triangular(M, target[:, :, None], upper=False).squeeze(2)
    innov = C_tt - (l * l).sum(1)
    small = innov <= PIVOT_TOL * C_tt.abs().clamp(min=1e-300)
    L[:, t + 1, :n] = l
    L[:, t + 1, n] = torch.where(small, torch.zeros_like(innov), innov.clamp(min=0).sqrt())
    dropped[:, t + 1] = small
    return (-innov).clamp(min=0) / C_tt.abs().clamp(min=1e-300)       # relative inconsistency (0 if PSD)


# ---------------------------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------------------------
def dmft(delta: float, *, step: Optional[float] = None, schedule: Optional[Callable[[int], float]] = None,
         l2: float = 0.0, steps: int, preprocessing="optimal", noise: float = 0.0, field: str = "real",
         samples: int = 100_000, replicates: int = 8, seed: int = 0,
         device: Union[str, torch.device, None] = None, dtype: torch.dtype = torch.float32,
         progress: bool = True, init: str = "spectral", init_overlap: Optional[float] = None,
         power_steps: int = 50, power_shift: float = 0.0, mu: str = "auto",
         chunk_size: Optional[int] = None, threads: Optional[int] = 1) -> Prediction:
    r"""DMFT prediction of spectral-initialised (regularised) Wirtinger flow on real Gaussian phase retrieval.

    Predicts ``reconstruct(op, y, algorithm="wf", init="spectral", preprocessing=preprocessing,
    step=step, l2=l2)`` on a real ``GaussianMeasurement`` with m = δn measurements of ‖x*‖ = 1 and
    intensities y = |Ax*|² + σε (``noise`` = σ), in the limit n → ∞ (theory.md §4; Chen & Shen,
    arXiv 2509.23527). Gradient descent x_{t+1} = x_t − η_t ∇L(x_t) on
    L(x) = (1/4m) Σ (⟨a_i,x⟩² − y_i)² + (λ/2)‖x‖² (λ = ``l2``) from x₀ = √(mean y) v̂.

    Args:
        delta: δ = m/n (measurements per unknown).
        step: constant step μ in library units μ/‖x₀‖² (= the theory's η since ‖x₀‖ → 1).
        schedule: callable t ↦ μ_t used for the update x_{t−1} → x_t, t = 1, 2, … (instead of
            ``step``; the convention of :mod:`phasetorch.optim.steps`); neither: the ``wf`` preset's
            Candès ramp μ_t = min(1 − e^{−t/330}, 0.2).
        l2: λ of the ridge term.
        steps: number of GD iterations T (prediction for t = 0..T).
        preprocessing: a name of :mod:`phasetorch.init.preprocessing` or a callable T(ŷ).
            ``"identity"`` is refused (no outlier eigenvalue in the proportional limit: the
            eigenvector localises); rank-based names need an elementwise form from
            ``spectral_limits``.
        noise: σ of the additive Gaussian noise on y.
        field: ``"real"`` only (the complex-field DMFT is not derived).
        samples: Monte-Carlo samples N **per replicate**; replicates: independent populations
            (means and standard errors are over replicates; ≥ 8 recommended).
        seed: seeds the replicates. device / dtype: where and in which precision the per-sample
            populations live (kernels are float64). progress: tqdm bar.
        init: ``"spectral"`` (default); ``"warm"`` (data-independent start with overlap
            ``init_overlap``); ``"power"`` (``power_steps`` steps of normalised power iteration on
            D + ``power_shift``·I from a warm start with overlap ``init_overlap`` (default 0.5), then
            GD — a cross-check of the closed form). Power iteration finds the eigenvalue of largest
            modulus: choose the shift so that λ₁(D) + c dominates both bulk edges (``mm`` at δ = 4:
            bulk [−1.1, 0.24], λ₁ = 0.437, c = 0.43 converges like 0.77^{2K}); for ``optimal`` the
            bulk reaches far below zero (T ≥ −999) and power iteration is impractical.
        chunk_size, threads: memory bound and CPU threads of the solve (see :func:`solve_dmft`).
        mu: estimator of μ(t): ``"pathwise"`` (∂r/∂S along each path; lower variance, needs a
            Lipschitz T), ``"stein"`` (valid for discontinuous T), or ``"auto"``: pathwise for
            ``optimal``, ``mm``, ``clipped`` and the warm start, Stein otherwise.

    Returns:
        :class:`~phasetorch.theory.prediction.Prediction` with columns iteration, loss, grad_norm,
        step, norm, rel_error, overlap, inner (= m), q, each with a standard error.

    Warns:
        RuntimeWarning when the step exceeds the stability rule r_max < √(2δ/η),
        r_max ≈ 5 c₀ max(1 + τ); the message gives the largest safe step.

    Raises:
        ValueError for the complex field, ``"identity"``, δ below the spectral threshold (ρ = 0),
        bad arguments; :class:`phasetorch.errors.DivergenceError` (naming the step) when the
        solve produces non-finite values.
    """
    if field != "real":
        if field == "complex":
            raise ValueError("the complex-field DMFT (holomorphic and antiholomorphic responses) is not available; "
                             "phasetorch.theory.spectral_limits does support field='complex' for the spectral start")
        raise ValueError(f"field must be 'real' (got {field!r})")
    if isinstance(preprocessing, str) and preprocessing == "identity":
        raise ValueError("preprocessing 'identity' (Candès WF, T(y) = y) has no outlier eigenvalue in the proportional "
                         "limit: T is unbounded, the top eigenvector localises and its overlap ρ → 0 as n grows, so "
                         "the spectral start and this DMFT do not apply. Use 'optimal', 'mm', 'trimmed' or 'clipped'.")
    from ..init.preprocessing import elementwise

    name = preprocessing if isinstance(preprocessing, str) else getattr(preprocessing, "__name__", "callable")
    lam_star = rho = eigenvalue = None
    T = None
    if init != "warm":
        from .spectral import spectral_limits

        lim = spectral_limits(delta, preprocessing=preprocessing, field="real", noise=noise)
        rho, lam_star = float(lim.rho), float(lim.lam_star)
        eigenvalue = float(lim.eigenvalue) if getattr(lim, "eigenvalue", None) is not None else None
        T = getattr(lim, "T", None)
        if T is None:
            T = elementwise(preprocessing, delta)
        if T is None:
            raise ValueError(f"preprocessing {name!r} is rank-based and has no elementwise T(ŷ) for the DMFT; "
                             "use 'optimal', 'mm', 'trimmed', 'clipped' or a callable")
        if init == "spectral" and not rho > 0:
            raise ValueError(f"δ = {delta} is below the spectral weak-recovery threshold of preprocessing {name!r}: the "
                             "spectral estimator has asymptotic overlap ρ = 0, so the two-stage (spectral start + GD) "
                             "theory does not apply. Increase δ (see phasetorch.theory.spectral_threshold) or use "
                             "init='warm' with a given overlap.")
    if mu == "auto":
        smooth = init == "warm" or (isinstance(preprocessing, str) and preprocessing in SMOOTH_PREPROCESSING)
        mu = "pathwise" if smooth else "stein"
    return solve_dmft(delta, steps=steps, model=phase_retrieval(noise), lam_star=lam_star, rho=rho, T=T,
                      step=step, schedule=schedule, l2=l2, init=init, init_overlap=init_overlap,
                      power_steps=power_steps, power_shift=power_shift, mu=mu, samples=samples,
                      replicates=replicates, seed=seed, device=device, dtype=dtype, chunk_size=chunk_size,
                      threads=threads,
                      progress=progress, params=dict(preprocessing=(name if init != "warm" else None), field=field,
                                                     eigenvalue=eigenvalue))
