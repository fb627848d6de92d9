r"""Dynamical mean-field theory (DMFT) of spectral-initialised gradient descent: the time-stepping solver.

Chen & Shen, "Learning single index model with gradient descent: spectral initialization and
precise asymptotics" (arXiv 2509.23527, 2025); equations as derived and checked in phasetorch's
theory notes (theory.md §4). Proportional limit n, d → ∞ with δ = n/d (library: δ = m/n, m
measurements of n unknowns), rows a_i ~ N(0, I_d), ‖x*‖ = 1, s_i = ⟨a_i, x*⟩, y_i = f(s_i, ε_i).

Gradient descent on L(x) = (1/n) Σ ℓ(⟨a_i,x⟩; y_i) + (λ/2)‖x‖²,  x_{t+1} = x_t − η_t ∇L(x_t),
from the spectral start x₀ = c₀ v̂ (v̂ the top eigenvector of D = (1/n) Σ T(ŷ_i) a_i a_iᵀ) is
described by two scalar processes coupled through kernels:

**Sample side** (one per data point; the start's law in :mod:`~phasetorch.theory.model`):

    r_t = U_t + Σ_{s<t} R_x(t,s) g(r_s; Y) + R_x(t,★) τ(Y) P,        r₀ = c₀(1 + τ(Y)) P,

with the Gaussian fields U_t of :mod:`~phasetorch.theory.fields` and the responses
R_g(t,s) = E g'(r_t) ∂r_t/∂U_s (:mod:`~phasetorch.theory.responses`), R_g(t,★) = E g'(r_t) ∂r_t/∂P,
μ(t) = E ∂g(r_t)/∂S|_Y (Stein form, or pathwise with ``mu="pathwise"``).

**Parameter side** (closed form, the update is linear in x): X_t = a_t X* + b_t W★ + Σ_{s<t} K(t,s) W_s,
Σ_W = δ C_g, C_g(s,s') = E g_s g_s', C_g(★,s) = E τ P g_s, C_g(★,★) = (1 − ρ²)/δ (used exactly, so
that E V̂² = E P² = 1; its Monte-Carlo value is ``checks["v_norm"]``), and

    a_{t+1} = (1−η_tλ) a_t − η_t [Σ_{s≤t} R_g(t,s) a_s + ρ R_g(t,★) + μ(t)],    a₀ = c₀ρ,
    b_{t+1} = (1−η_tλ) b_t − η_t [Σ_{s≤t} R_g(t,s) b_s + R_g(t,★)],              b₀ = c₀,
    K(t+1,s') = (1−η_tλ) K(t,s') − η_t [Σ_{s≤t} R_g(t,s) K(s,s') + 1{s'=t}/δ],

with R_x(t,s) = K(t,s), R_x(t,★) = b_t, m(t) = a_t.

**Solver.** One causal forward pass over t (no damped global iteration): draw U_t, form r_t and the
forward-propagated Jacobian columns ∂r_t/∂P, ∂r_t/∂S, compute the responses (exact pathwise,
O(N t²) per step), Σ_W(·, t), the observables, then a, b, K at t + 1 and the next field. All T×T
algebra is float64; per-sample arrays use ``dtype``. Independent Monte-Carlo populations
("replicates") run as a batch dimension; means and standard errors are over replicates.

**Cost.** N = ``samples`` per replicate, R = ``replicates``: time ≈ R·N·T³/6 multiply-adds for the
responses plus O(R·N·T²) (complex field: about 2×); memory ≈ 32·R·N·T bytes (float32, pathwise μ:
basis 4, float64 history of g 8, g' 4, three memory channels 12, back-substitution buffer 4 while the chunk
holds all N; 28 with Stein), complex field 68 (60 with Stein). Measured: results/dmft_cost.md
(scripts/dmft_cost.py).

The same machinery runs a data-independent warm start (``init="warm"``: x₀ = c(ρ₀x* + √(1−ρ₀²)w),
w independent, i.e. τ ≡ 0 and Var W★ = 1 − ρ₀²) and a normalised power-iteration pre-phase
(``init="power"``: K steps x_{k+1} ∝ (D + cI) x_k from a warm start, then GD, whose gradient is
g = T(Y) r) — the independent cross-check of the closed-form spectral terms (theory.md §4).
**Complex field** (docs/theory.md): a_i ~ CN(0, I_d), r = a_iᴴx, GD with the library's gradient
2∂L/∂x̄ = (1/n) Σ g(r_i) a_i + λx (g = 2∂ℓ/∂r̄). Circular symmetry makes every kernel real and kills the
antiholomorphic responses in expectation, so the equations above hold verbatim with complex circular
fields (E U_t Ū_s = C(t,s)), Σ_W = δ E Re[g ḡ], μ = E Re[S̄ g] − …, and holomorphic responses
R_g(t,s) = E ∂g(r_t)/∂U_s computed from the real-linear pathwise Jacobians (δg = g_r δr + g_r̄ δr̄).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from .. import distributed as D
from ..errors import DivergenceError
from ..init.preprocessing import elementwise
from ..optim.presets import get_preset
from ..optim.steps import wf_ramp
from ..tensors import as_device, check_int, check_memory, check_number, make_generator
from .fields import coefficient_norm2, extend_basis, two_time_covariance
from .model import SingleIndexModel, StartLaw, phase_retrieval, resolve_model, start_law
from .prediction import Prediction
from .responses import response_row, response_row_complex, stein_mu
from .spectral import spectral_limits

Tensor = torch.Tensor

__all__ = ["dmft", "solve_dmft", "step_sizes", "replicate_seeds", "chunk_length", "STABILITY_SIGMAS",
           "SMOOTH_PREPROCESSING"]

STABILITY_SIGMAS = 5.0
SMOOTH_PREPROCESSING = ("optimal", "mm", "clipped")     # Lipschitz T: pathwise μ is valid
COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}
INITS = ("spectral", "warm", "power")


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------
def step_sizes(step: Optional[float], schedule: Optional[Callable[[int], float]], steps: int) -> Tensor:
    """μ_t for t = 0..steps: μ_t is the step of the update x_{t−1} → x_t (μ_0 = 0), float64.

    The library's convention (:mod:`phasetorch.optim.steps`): ``schedule(t)`` is called with the
    index t = 1, 2, … of the new iterate; neither ``step`` nor ``schedule``: the ``wf`` preset's
    Candès ramp μ_t = min(1 − e^{−t/τ₀}, μ_max).
    """
    if step is not None and schedule is not None:
        raise ValueError("pass either step= (constant μ) or schedule= (callable t ↦ μ_t), not both")
    steps = check_int(steps, "steps (the number of GD iterations T)", 0)
    mus = torch.zeros(steps + 1, dtype=torch.float64)
    if step is not None:
        mus[1:] = check_number(step, "step (the constant μ, in units of 1/‖x₀‖²)", 0.0, strict=True)
        return mus
    if schedule is None:
        opts = get_preset("wf").defaults(complex_signal=False)
        tau0, mu_max = float(opts["tau0"]), float(opts["mu_max"])
        schedule = lambda t: wf_ramp(t, tau0, mu_max)  # noqa: E731
    if not callable(schedule):
        raise ValueError(f"schedule must be a callable t ↦ μ_t, got {type(schedule).__name__}")
    for t in range(1, steps + 1):
        mu = schedule(t)
        if isinstance(mu, torch.Tensor) and mu.numel() == 1:
            mu = mu.item()
        if isinstance(mu, bool) or not isinstance(mu, (int, float)):
            raise ValueError(f"schedule({t}) returned {mu!r}; the schedule must map t to a step size μ_t (a number)")
        mu = float(mu)
        if not math.isfinite(mu) or mu < 0:
            raise ValueError(f"schedule({t}) returned {mu}; a step size must be finite and ≥ 0")
        mus[t] = mu
    return mus


def _check_seeds(seeds: Sequence[int]) -> List[int]:
    if isinstance(seeds, (str, bytes, int)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds must be a non-empty list of int seeds (one per replicate), got {seeds!r}")
    out = [check_int(s, "each of seeds", 0) for s in seeds]
    if not out:
        raise ValueError("seeds is empty: give one int seed per replicate, or seeds=None")
    return out


def replicate_seeds(seed: int, replicates: int) -> List[int]:
    """One seed per Monte-Carlo replicate, drawn from ``seed``."""
    g = make_generator(int(seed))
    return [int(s) for s in torch.randint(0, 2 ** 62, (replicates,), generator=g)]


def chunk_length(samples: int, replicates: int, length: int, device: torch.device,
                 chunk_size: Optional[int] = None) -> int:
    """Samples per chunk of the response back-substitution: ``chunk_size`` (default: all on CUDA; on
    CPU as many as keep its (replicates, length, chunk) buffer under 2²⁶ numbers), made equal."""
    if chunk_size is None:
        chunk_size = samples if device.type == "cuda" else max(4096, (1 << 26) // (replicates * length))
    chunk_size = min(_check_chunk_size(chunk_size), samples)
    return -(-samples // (-(-samples // chunk_size)))


def _check_chunk_size(chunk_size: Optional[int]) -> Optional[int]:
    """``chunk_size`` (None or an int ≥ 1), validated."""
    if chunk_size is None:
        return None
    return check_int(chunk_size, "chunk_size (samples per chunk of the back-substitution; None = automatic)", 1)


def _check_threads(threads: Optional[int]) -> Optional[int]:
    """``threads`` (None or an int ≥ 1), validated."""
    if threads is None:
        return None
    return check_int(threads, "threads (CPU threads for the solve; None keeps torch's setting)", 1)


def _check_numbers(delta, steps, l2, samples, replicates, seed, power_steps, power_shift, chunk_size,
                  threads) -> dict:
    """The numeric arguments shared by :func:`dmft` and :func:`solve_dmft`, validated (ValueError naming
    the argument and its range: ints must be ints, floats finite)."""
    return dict(
        delta=check_number(delta, "delta (= m/n, measurements per unknown)", 0.0, strict=True),
        steps=check_int(steps, "steps (the number of GD iterations T)", 0),
        l2=check_number(l2, "l2 (the ridge λ ≥ 0)", 0.0),
        samples=check_int(samples, "samples (Monte-Carlo samples per replicate)", 2),
        replicates=check_int(replicates, "replicates (independent Monte-Carlo populations)", 1),
        seed=check_int(seed, "seed", 0),
        power_steps=check_int(power_steps, "power_steps", 0),
        power_shift=check_number(power_shift, "power_shift (the shift c of D + cI)"),
        chunk_size=_check_chunk_size(chunk_size),
        threads=_check_threads(threads),
    )


def _check_modes(init: str, mu: str, dtype) -> str:
    if init not in INITS:
        raise ValueError(f"init must be 'spectral', 'warm' or 'power' (got {init!r})")
    if mu not in ("stein", "pathwise", "auto"):
        raise ValueError(f"mu must be 'stein', 'pathwise' or 'auto' (got {mu!r})")
    if mu == "auto":                              # T is not differentiated in a warm start
        mu = "pathwise" if init == "warm" else "stein"
    if dtype not in (torch.float32, torch.float64):
        raise ValueError("dtype must be torch.float32 or torch.float64")
    return mu


def _start_overlap(init: str, model: SingleIndexModel, rho, lam_star, T, init_overlap,
                   power_steps: int) -> Tuple[float, int]:
    """(ρ of the start, number of power steps K₀), validated."""
    if init == "spectral":
        if lam_star is None or rho is None or T is None:
            raise ValueError("init='spectral' needs lam_star, rho and T (see phasetorch.theory.spectral_limits)")
        rho_p = check_number(rho, "rho (the spectral overlap)")
        check_number(lam_star, "lam_star (λ* of the spectral estimator)")
        if not 0 < rho_p <= 1:
            raise ValueError(f"the spectral overlap rho must be in (0, 1] (got {rho_p}); rho = 0 means δ is "
                             "below the spectral threshold and the spectral start carries no information")
    else:
        rho_p = init_overlap if init_overlap is not None else (0.5 if init == "power" else None)
        if rho_p is None:
            raise ValueError("init='warm' needs init_overlap=ρ₀ (the overlap of x₀ with x*)")
        rho_p = check_number(rho_p, "init_overlap (ρ₀ of the start)")
        if not 0 <= rho_p <= 1:
            raise ValueError(f"init_overlap must be in [0, 1] (got {rho_p})")
        if init == "power":
            if T is None:
                raise ValueError("init='power' needs the preprocessing T")
            if rho_p == 0:
                raise ValueError("a power iteration from a start with zero overlap keeps zero overlap in the "
                                 "proportional limit; give init_overlap > 0")
    if init in ("spectral", "power") and model.mean_y <= 0:
        raise ValueError(f"model {model.name!r} has E y = {model.mean_y} ≤ 0: no spectral start; use init='warm'")
    K0 = check_int(power_steps, "power_steps", 0) if init == "power" else 0
    if init == "power" and K0 < 1:
        raise ValueError("init='power' needs power_steps ≥ 1")
    return rho_p, K0


@contextmanager
def _cpu_threads(threads: Optional[int], device) -> Iterator[None]:
    """Run the block with ``threads`` CPU threads (restored afterwards); a no-op on CUDA or for None."""
    threads = _check_threads(threads)
    if threads is None or (device is not None and torch.device(device).type != "cpu"):
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Draws:
    """Standard normal (R, N) draws, one CPU generator per replicate (float64, then ``dtype`` on ``device``).

    :meth:`complex` draws CN(0, 1) = (g₁ + i g₂)/√2 (E|z|² = 1, the library's complex Gaussian)."""

    def __init__(self, seeds: Sequence[int], samples: int, device: torch.device, dtype: torch.dtype):
        self.gens = [make_generator(int(s)) for s in seeds]
        self.N, self.device, self.dtype = samples, device, dtype

    def __call__(self) -> Tensor:
        return torch.stack([torch.randn(self.N, generator=g, dtype=torch.float64) for g in self.gens]).to(
            device=self.device, dtype=self.dtype)

    def complex(self) -> Tensor:
        z = torch.stack([torch.randn(self.N, 2, generator=g, dtype=torch.float64) for g in self.gens])
        return torch.view_as_complex(z * math.sqrt(0.5)).to(device=self.device, dtype=COMPLEX_OF[self.dtype])

    def field(self, is_complex: bool) -> Tensor:
        return self.complex() if is_complex else self()


@dataclass(frozen=True)
class _Setup:
    """Validated constants of one solve."""

    delta: float
    steps: int
    K0: int                       # power-iteration steps before GD
    rho: float                    # overlap of the start
    c0: float                     # ‖x₀‖
    l2: float
    pathwise: bool                # μ pathwise (else Stein)
    power_shift: float
    mus: Tensor                   # μ_t, t = 0..steps
    eta_safe: float
    R: int
    N: int
    chunk: int
    dtype: torch.dtype
    device: torch.device
    is_complex: bool = False

    @property
    def cdtype(self) -> torch.dtype:   # dtype of the per-sample fields (complex in the complex field)
        return COMPLEX_OF[self.dtype] if self.is_complex else self.dtype

    @property
    def TT(self) -> int:          # total time steps of the combined (power + GD) process
        return self.K0 + self.steps

    @property
    def etas(self) -> Tensor:     # η_t = μ_t / ‖x₀‖²
        return self.mus / self.c0 ** 2


def _safe_step(model: SingleIndexModel, tau_max: float, delta: float, c0: float, l2: float, mus: Tensor,
               steps: int, check: bool) -> float:
    """Largest stable η (theory.md §4: r_max ≈ 5 c₀ max|1 + τ| must stay below √(2δ/η); ``tau_max`` is
    max|1 + τ| over the whole population); warns above it."""
    r_max = STABILITY_SIGMAS * c0 * tau_max
    eta_safe = model.safe_step(delta, r_max, l2)
    if check and steps > 0 and float((mus / c0 ** 2).max()) > eta_safe:
        warnings.warn(
            f"step μ = {float(mus.max()):.4g} exceeds the stability limit of the explicit gradient step: "
            f"residuals up to r_max ≈ {r_max:.3g} diverge once (η/δ) r² ≳ 2; the largest safe step is about "
            f"{eta_safe * c0 ** 2:.4g}. Simulations with this step are expected to blow up, and so may the DMFT.",
            RuntimeWarning, stacklevel=5)
    return eta_safe


# ---------------------------------------------------------------------------------------------
# the causal forward pass
# ---------------------------------------------------------------------------------------------
class _Pass:
    """State of the forward pass over t = 0..TT (array layout of :mod:`~phasetorch.theory.fields`).

    Complex field: the basis, the residuals and the histories of g and of its directional derivatives
    are complex (CN(0, 1) basis directions; the coefficients L, a, b, K, Σ_W stay real, see
    docs/theory.md); g_r is kept real and g_r̄ complex for the responses.
    """

    def __init__(self, setup: _Setup, model: SingleIndexModel, law: StartLaw, draw: _Draws):
        s = setup
        R, N, TT, dtype, dev = s.R, s.N, s.TT, s.dtype, s.device
        cd = s.cdtype
        f64 = dict(dtype=torch.float64, device=dev)
        self.s, self.model, self.law, self.draw = s, model, law, draw
        self.B = torch.empty(R, TT + 2, N, dtype=cd, device=dev)        # basis S, G, ξ_1..ξ_TT
        self.B[:, 0], self.B[:, 1] = law.S, law.G
        # histories: g(r_s) also in float64 (its Gram matrix is Σ_W, which must stay positive semi-definite
        # to ~1e-16 for the degenerate factorisation), g'(r_s), and the channels the memory sums need:
        self.nh = 3 if s.pathwise else 2         # H channels: g, δg along δP = 1, [δg along δS = 1 (through Y)]
        self.Gh = torch.zeros(R, TT + 1, N, dtype=COMPLEX_OF[torch.float64] if s.is_complex else torch.float64,
                              device=dev)
        self.GPh = torch.zeros(R, TT + 1, N, dtype=dtype, device=dev)                  # g' (real) / g_r
        self.GBh = torch.zeros(R, TT + 1, N, dtype=cd, device=dev) if s.is_complex else None   # g_r̄
        self.H = torch.zeros(R, TT + 1, self.nh, N, dtype=cd, device=dev)
        self.tauP = law.tau_P
        self.tauP64 = self.tauP.to(self.Gh.dtype)
        self.xbuf = torch.empty(R, TT + 1, s.chunk, dtype=cd, device=dev)   # back-substitution buffer
        self.a, self.b = torch.zeros(R, TT + 2, **f64), torch.zeros(R, TT + 2, **f64)
        self.K = torch.zeros(R, TT + 2, TT + 1, **f64)        # K(t, s), s < t
        self.SW = torch.zeros(R, TT + 2, TT + 2, **f64)       # Σ_W, index 0 = ★, s + 1 = W_s
        self.L = torch.zeros(R, TT + 1, TT + 2, **f64)        # U_t = L[t] · basis
        self.Rg = torch.zeros(R, TT + 1, TT + 1, **f64)
        self.Rgs = torch.zeros(R, TT + 1, **f64)              # R_g(t, ★)
        self.mu = torch.zeros(R, TT + 1, **f64)
        self.q = torch.zeros(R, TT + 1, **f64)
        self.loss = torch.zeros(R, TT + 1, **f64)
        self.gnorm = torch.zeros(R, TT + 1, **f64)            # ‖∇L(x_t)‖
        self.gsig = torch.zeros(R, TT + 1, **f64)             # ⟨∇L(x_t), x*⟩
        self.giter = torch.zeros(R, TT + 1, **f64)            # ⟨∇L(x_t), x_t⟩
        self.dropped = torch.zeros(R, TT + 1, dtype=torch.bool, device=dev)
        self.worst = torch.zeros(R, **f64)                    # largest relative negative innovation
        self.sq = math.sqrt(max(1.0 - s.rho ** 2, 0.0))
        self.a[:, 0], self.b[:, 0] = s.c0 * s.rho, s.c0
        self.L[:, 0, 0], self.L[:, 0, 1] = s.c0 * s.rho, s.c0 * self.sq
        # Var W★ = δE[τ²|P|²] = 1 − ρ² (spectral; theory.md §4) and 1 − ρ₀² (warm), exactly
        self.SW[:, 0, 0] = 1.0 - s.rho ** 2
        self.checks: Dict[str, Tensor] = {}

    def gradient(self, t: int):
        """(g, (g_r, g_r̄), ∂_y g) as functions of r at step t: power phase g = T(Y) r, then the model's loss."""
        law, model = self.law, self.model
        if t < self.s.K0:
            zero = (lambda r: torch.zeros_like(r)) if self.s.is_complex else (lambda r: None)
            return (lambda r: law.T * r), (lambda r: (law.T, zero(r))), \
                (lambda r: law.dT * r if law.dT is not None else None)
        Y = law.Y
        return (lambda r: model.g(r, Y)), (lambda r: model.linearise(r, Y)), (lambda r: model.g_y(r, Y))

    @staticmethod
    def _lin(gr: Tensor, grb: Optional[Tensor], v: Tensor) -> Tensor:
        """δg = g_r δr (+ g_r̄ conj(δr) in the complex field)."""
        return gr * v if grb is None else gr * v + grb * v.conj()

    def sample_side(self, t: int) -> Tuple[Tensor, Tensor, Tensor]:
        """r_t, g(r_t), g'(r_t), and the histories' rows t (forward-propagated Jacobian columns)."""
        R, N, nh, law = self.s.R, self.s.N, self.nh, self.law
        cd = self.s.cdtype
        gfn, linfn, gyfn = self.gradient(t)
        bt = self.b[:, t:t + 1].to(self.s.dtype)
        U = torch.bmm(self.L[:, t:t + 1, :t + 2].to(cd), self.B[:, :t + 2]).squeeze(1)
        r = U.add_(bt * self.tauP)
        JP = (bt * law.tau).to(cd)                       # ∂r_t/∂P along δP = 1
        if t > 0:
            mem = torch.bmm(self.K[:, t:t + 1, :t].to(cd), self.H[:, :t].reshape(R, t, nh * N)).view(R, nh, N)
            r += mem[:, 0]
            JP += mem[:, 1]
        gt = gfn(r)
        gr, grb = linfn(r)
        if self.s.is_complex:
            gr = gr.real if gr.is_complex() else gr
            self.GBh[:, t] = grb
        self.Gh[:, t], self.GPh[:, t] = gt, gr
        self.H[:, t, 0] = gt
        self.H[:, t, 1] = self._lin(gr, grb, JP)
        if self.s.pathwise:
            JS = bt * law.dtau * law.f_S * law.P         # ∂r_t/∂S along δS = 1, through Y
            if t > 0:
                JS = JS + mem[:, 2]
            gy = gyfn(r)
            self.H[:, t, 2] = self._lin(gr, grb, JS) + (gy * law.f_S if gy is not None else 0)
        self._grb_t = grb
        return r, gt, gr

    def kernels(self, t: int, r: Tensor, gt: Tensor, gpt: Tensor) -> Tensor:
        """R_g(t,★), R_g(t,·), μ(t), Σ_W(·,t); returns the sample averages (E ∂g/∂P, E Sg, E ℓ, E rg)."""
        s, law = self.s, self.law
        # float32 cascade sums are accurate to ~1e-7, far below Monte-Carlo error
        if s.is_complex:           # E Re[δg along δP = 1], E Re[S̄ g], E ℓ, E Re[r̄ g]
            avg = torch.stack([self.H[:, t, 1].real, (law.S.conj() * gt).real, self.model.loss(r, law.Y),
                               (r.conj() * gt).real], dim=1).mean(dim=2)
        else:
            avg = torch.stack([self.H[:, t, 1], law.S * gt, self.model.loss(r, law.Y), r * gt], dim=1).mean(dim=2)
        avg = avg.to(torch.float64)
        self.Rgs[:, t] = avg[:, 0]
        if s.K0 > 0 and t == s.K0:          # Rayleigh quotient x_Kᴴ D x_K/‖x_K‖² of the last power iterate
            r2 = r.abs().square() if s.is_complex else r * r
            self.checks["rayleigh"] = (law.T * r2).mean(dim=1).to(torch.float64) / s.c0 ** 2
        if s.is_complex:
            self.Rg[:, t, :t + 1] = response_row_complex(self.K, self.GPh, self.GBh, gpt, self._grb_t, t, self.xbuf)
        else:
            self.Rg[:, t, :t + 1] = response_row(self.K, self.GPh, gpt, t, self.xbuf)
        if s.pathwise:
            self.mu[:, t] = self.H[:, t, 2].mean(dim=1).real.to(torch.float64)
        else:
            self.mu[:, t] = stein_mu(avg[:, 1], s.rho, self.Rgs[:, t], self.L[:, :t + 1, 0], self.Rg[:, t, :t + 1])
        g64, SW, c = self.Gh[:, t], self.SW, s.delta / s.N
        if s.is_complex:           # Σ_W(a, b) = δ E Re[g_a ḡ_b] (the imaginary part vanishes in the limit)
            SW[:, 0, t + 1] = c * (self.tauP64.conj() * g64).real.sum(dim=1)
            SW[:, 1:t + 2, t + 1] = c * torch.bmm(self.Gh[:, :t + 1], g64.conj()[:, :, None]).squeeze(2).real
        else:
            SW[:, 0, t + 1] = c * (self.tauP64 * g64).sum(dim=1)
            SW[:, 1:t + 2, t + 1] = c * torch.bmm(self.Gh[:, :t + 1], g64[:, :, None]).squeeze(2)
        SW[:, t + 1, :t + 2] = SW[:, :t + 2, t + 1]
        return avg

    def observables(self, t: int, avg: Tensor) -> None:
        l2 = self.s.l2
        self.q[:, t] = coefficient_norm2(self.SW, self.a[:, t], self.b[:, t], self.K[:, t], t)
        self.loss[:, t] = avg[:, 2] + 0.5 * l2 * self.q[:, t]
        self.gsig[:, t] = avg[:, 1] + l2 * self.a[:, t]
        self.giter[:, t] = avg[:, 3] + l2 * self.q[:, t]

    def parameter_side(self, t: int) -> None:
        """a, b, K at t + 1 from Γ_t = Σ_s R_g(t,s) X_s + R_g(t,★) V̂ + μ(t) X* + W_t/δ (and ‖∇L(x_t)‖)."""
        s, a, b, K = self.s, self.a, self.b, self.K
        w = self.Rg[:, t, :t + 1]
        ga = (w * a[:, :t + 1]).sum(1) + s.rho * self.Rgs[:, t] + self.mu[:, t]
        gb = (w * b[:, :t + 1]).sum(1) + self.Rgs[:, t]
        gK = torch.bmm(w[:, None], K[:, :t + 1, :t + 1]).squeeze(1)
        gK[:, t] += 1.0 / s.delta
        if t < s.K0:                                                     # power step x ← (D + cI)x / ‖·‖
            na = s.power_shift * a[:, t] + ga
            nbv = s.power_shift * b[:, t] + gb
            nK = s.power_shift * K[:, t, :t + 1] + gK
            scale = s.c0 / coefficient_norm2(self.SW, na, nbv, nK, t + 1).clamp(min=1e-300).sqrt()
            a[:, t + 1], b[:, t + 1], K[:, t + 1, :t + 1] = na * scale, nbv * scale, nK * scale[:, None]
            return
        Ga = s.l2 * a[:, t] + ga
        Gb = s.l2 * b[:, t] + gb
        GK = s.l2 * K[:, t, :t + 1] + gK
        self.gnorm[:, t] = coefficient_norm2(self.SW, Ga, Gb, GK, t + 1).clamp(min=0).sqrt()
        eta = float(s.etas[t - s.K0 + 1]) if t < s.TT else 0.0      # the last row only needs ∇L(x_T)
        a[:, t + 1] = a[:, t] - eta * Ga
        b[:, t + 1] = b[:, t] - eta * Gb
        K[:, t + 1, :t + 1] = K[:, t, :t + 1] - eta * GK

    def divergence(self, t: int) -> Optional[DivergenceError]:
        """A DivergenceError naming the step when step t produced non-finite values, else None."""
        finite = bool(torch.isfinite(self.q[:, t]).all() and torch.isfinite(self.loss[:, t]).all()
                      and torch.isfinite(self.a[:, t + 1]).all() and torch.isfinite(self.Rg[:, t, :t + 1]).all())
        if finite:
            return None
        s = self.s
        it = t - s.K0
        mu_max = float(s.mus.max())
        where = f"GD iteration {it}" if it >= 0 else f"power-iteration step {t}"
        msg = (f"the DMFT produced non-finite values at {where}: the step is unstable"
               + (f" (μ = {mu_max:.4g}; the stability rule suggests μ ≤ {s.eta_safe * s.c0 ** 2:.4g})"
                  if it >= 0 else ""))
        return DivergenceError(msg, algorithm="dmft", iteration=it, step=mu_max)

    def next_field(self, t: int) -> None:
        """Coefficients of U_{t+1} (pivoted triangular solve) and a fresh basis direction ξ_{t+1}."""
        defect = extend_basis(self.L, self.a, self.b, self.K, self.SW, self.dropped, t, self.s.rho, self.sq)
        self.worst = torch.maximum(self.worst, defect)
        self.B[:, t + 2] = self.draw.field(self.s.is_complex)

    def run(self, progress: bool) -> None:
        TT = self.s.TT
        bar = tqdm(total=TT + 1, desc="DMFT", disable=not progress, leave=False)
        for t in range(TT + 1):
            r, gt, gpt = self.sample_side(t)
            self.observables(t, self.kernels(t, r, gt, gpt))
            self.parameter_side(t)
            err = self.divergence(t)
            if err is not None:
                bar.close()
                raise err
            if t == TT:
                break
            self.next_field(t)
            bar.update(1)
        bar.update(1)
        bar.close()

    def prediction(self, params: dict, extra: Optional[dict] = None, gather: bool = False) -> Prediction:
        """The GD phase (t = K₀..TT) as a :class:`Prediction`; ``extra`` entries override ``params``.
        ``gather``: this process holds a share of the replicates; the per-replicate curves, kernels and
        checks of every process are concatenated (in replicate order) before the means and standard
        errors are formed, so the result is the one process's that solves them all."""
        s = self.s
        sl = slice(s.K0, s.TT + 1)
        C, cV = two_time_covariance(self.a, self.b, self.K, self.SW, s.rho, s.TT + 1)
        gd_idx = torch.tensor([0] + list(range(s.K0 + 1, s.TT + 2)), device=s.device)      # ★, W_K0..W_TT
        Km = self.K
        kernels = {
            "C": C[:, sl, sl], "R_x": Km[:, sl, sl], "K": Km[:, sl, sl], "R_g": self.Rg[:, sl, sl],
            "R_g_star": self.Rgs[:, sl], "mu": self.mu[:, sl], "a": self.a[:, sl], "b": self.b[:, sl],
            "c_V": cV[:, sl], "C_g": self.SW[:, gd_idx][:, :, gd_idx] / s.delta,
        }
        dropped, defect = int(self.dropped.sum()), float(self.worst.max())
        curves = dict(m=self.a[:, sl], q=self.q[:, sl], loss=self.loss[:, sl], grad_norm=self.gnorm[:, sl],
                      grad_signal=self.gsig[:, sl], grad_iterate=self.giter[:, sl])
        checks = dict(self.checks)
        if gather:
            cat = lambda t: D.all_gather_cat(t.contiguous(), 0)          # noqa: E731
            curves = {k: cat(v) for k, v in curves.items()}
            kernels = {k: cat(v) for k, v in kernels.items()}
            checks = {k: cat(v) for k, v in checks.items()}
            dropped = sum(D.all_gather_object(dropped))
            defect = max(D.all_gather_object(defect))
        params = dict(params, dropped_directions=dropped, factorisation_defect=defect)
        params.update(extra or {})
        return Prediction.from_replicates(iteration=torch.arange(s.steps + 1), step=s.etas, kernels=kernels,
                                          params=params, checks=checks, **curves)


# ---------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------
def solve_dmft(delta: float, *, steps: int, model: Optional[SingleIndexModel] = None,
               lam_star: Optional[float] = None, rho: Optional[float] = None,
               T: Optional[Callable[[Tensor], Tensor]] = None,
               step: Optional[float] = None, schedule: Optional[Callable[[int], float]] = None, l2: float = 0.0,
               init: str = "spectral", init_overlap: Optional[float] = None, init_norm: float = 1.0,
               power_steps: int = 50, power_shift: float = 0.0, mu: str = "auto",
               samples: int = 100_000, replicates: int = 8, seed: int = 0, seeds: Optional[Sequence[int]] = None,
               device: Union[str, torch.device, None] = None, dtype: torch.dtype = torch.float32,
               chunk_size: Optional[int] = None, progress: bool = True, params: Optional[dict] = None,
               check_stability: bool = True, threads: Optional[int] = 1, distributed: bool = True) -> Prediction:
    r"""Solve the discrete-time DMFT of gradient descent by one causal Monte-Carlo pass (module docstring).

    The lower-level entry point of :func:`dmft`: the model and the spectral quantities are explicit.

    Args:
        delta, steps: δ = m/n; GD iterations T (the prediction covers t = 0..T).
        model: a :class:`~phasetorch.theory.model.SingleIndexModel` (default ``phase_retrieval()``).
        lam_star, rho, T: λ* of δE[(S² − 1)τ] = 1, the spectral overlap ρ (theory.md §2) and the
            preprocessing T(ŷ) on tensors; ``"spectral"`` needs all three, ``"power"`` needs T.
        step / schedule / l2: constant μ (library units μ/‖x₀‖², so η = μ/c₀²), a callable t ↦ μ_t for
            x_{t−1} → x_t (t = 1, 2, …), or neither (the ``wf`` preset's ramp); λ of (λ/2)‖x‖².
        init: ``"spectral"`` (x₀ = c₀ v̂), ``"warm"`` (x₀ = c(ρ₀ x* + √(1−ρ₀²) w)) or ``"power"``
            (``power_steps`` of x ← (D + c I)x/‖·‖, c = ``power_shift``, from the warm start, then GD).
        init_overlap, init_norm: ρ₀ of the warm start (default 0.5 for power); c₀ = ‖x₀‖.
        mu: ``"stein"`` (valid for non-smooth T), ``"pathwise"`` (needs T and the link Lipschitz) or
            ``"auto"`` (pathwise for the warm start, else Stein).
        samples, replicates: N per replicate; independent populations.
        seed / seeds: ``seed`` derives one seed per replicate; ``seeds`` gives them (replicate r of a
            batch equals a one-replicate run with ``seeds=[seeds[r]]``).
        device, dtype: where and in which precision the populations live (random numbers are drawn on
            CPU, so CPU and CUDA see the same samples); kernels are float64.
        chunk_size: samples per chunk of the back-substitution (:func:`chunk_length`).
        progress, params, check_stability: tqdm bar; extra entries of ``Prediction.params``; warn
            above the stability rule. threads: CPU threads for the solve (restored afterwards; None
            keeps torch's setting).
        distributed: inside a process group of several processes (:mod:`phasetorch.distributed`,
            ``torchrun``), every process solves a contiguous share of the replicates (each drawn from
            its own seed, as one process would) and the per-replicate curves are gathered before the
            means and standard errors: every rank returns the single-process prediction. False: solve
            every replicate here.
    """
    dev = as_device(device, "dmft: device")
    with _cpu_threads(threads, dev):
        model = model if model is not None else phase_retrieval()
        num = _check_numbers(delta, steps, l2, samples, replicates, seed, power_steps, power_shift, chunk_size,
                            threads)
        delta, steps, l2, samples, replicates = (num[k] for k in ("delta", "steps", "l2", "samples", "replicates"))
        seed, power_shift, chunk_size = num["seed"], num["power_shift"], num["chunk_size"]
        if not isinstance(model, SingleIndexModel):
            raise TypeError(f"model must be a phasetorch.theory.SingleIndexModel, got {type(model).__name__}")
        if mu == "auto" and not model.smooth_link:
            mu = "stein"                       # a jump of the link in s: the pathwise ∂f/∂s misses it
        mu = _check_modes(init, mu, dtype)
        c0 = check_number(init_norm, "init_norm (c₀ = ‖x₀‖)", 0.0, strict=True)
        rho_p, K0 = _start_overlap(init, model, rho, lam_star, T, init_overlap, power_steps)
        mus = step_sizes(step, schedule, steps)
        per_entry = (68 if model.is_complex else 32) * (2 if dtype == torch.float64 else 1)
        check_memory(per_entry * replicates * samples * (steps + 1),
                     f"the DMFT populations ({replicates} × {samples} samples × {steps + 1} times)",
                     "use fewer samples, replicates or steps", device=dev)
        seeds = replicate_seeds(seed, replicates) if seeds is None else _check_seeds(seeds)
        all_seeds = seeds
        size = D.world_size() if distributed and D.is_active() else 1
        if size > 1:            # the replicates are independent populations: each process solves its share
            D.check_same([delta, steps, l2, model.name, init, samples, all_seeds], "DMFT settings")
            if len(all_seeds) < size:
                raise ValueError(f"dmft: {len(all_seeds)} replicates cannot be split over {size} processes; use "
                                 f"replicates ≥ {size}")
            lo, hi = D.shard_range(len(all_seeds), D.rank(), size)
            seeds = all_seeds[lo:hi]
        R, N = len(seeds), samples
        draw = _Draws(seeds, N, dev, dtype)
        S, G = draw.field(model.is_complex), draw.field(model.is_complex)
        eps = draw()
        law = start_law(model, S, G, eps, rho_p, T=T if init != "warm" else None,
                        lam_star=lam_star if init == "spectral" else None, pathwise=mu == "pathwise")
        tau_max = float((1 + law.tau).abs().max())
        if size > 1:
            tau_max = max(D.all_gather_object(tau_max))
        eta_safe = _safe_step(model, tau_max, delta, c0, l2, mus, steps, check_stability and D.is_main())
        setup = _Setup(delta=delta, steps=steps, K0=K0, rho=rho_p, c0=c0, l2=l2, pathwise=mu == "pathwise",
                       power_shift=float(power_shift), mus=mus, eta_safe=eta_safe, R=R, N=N,
                       chunk=chunk_length(N, R, K0 + steps + 1, dev, chunk_size), dtype=dtype, device=dev,
                       is_complex=model.is_complex)
        run = _Pass(setup, model, law, draw)
        if init == "spectral":
            run.checks.update(law.anchors(delta, rho_p))
        run.run(progress)
        info = dict(delta=delta, step=(float(step) if step is not None else None),
                    schedule=(None if schedule is None and step is not None else
                              ("wf_ramp" if schedule is None else getattr(schedule, "__name__", "callable"))),
                    l2=l2, noise=model.noise, model=model.name, field=model.field, loss_kind=model.kind,
                    algorithm=model.algorithm,
                    samples=N, replicates=len(all_seeds), seed=int(seed), seeds=all_seeds,
                    rho=(float(rho) if rho is not None else None),
                    lam_star=(float(lam_star) if lam_star is not None else None),
                    init=init, init_overlap=(rho_p if init != "spectral" else None), init_norm=c0,
                    power_steps=K0, power_shift=float(power_shift) if init == "power" else None, mu=mu,
                    dtype=str(dtype).replace("torch.", ""), safe_step=eta_safe * c0 ** 2)
        return run.prediction(info, params, gather=size > 1)


def _spectral_inputs(delta: float, preprocessing, model: SingleIndexModel, init: str, name: str):
    """(λ*, ρ, λ₁(D) limit, elementwise T) of the spectral estimator of the model's link; all None for a warm start."""
    if init == "warm":
        return None, None, None, None
    if model.mean_y <= 0:
        raise ValueError(f"model {model.name!r} has E y = {model.mean_y} ≤ 0: no spectral start (the link carries no "
                         "second-order information after normalising y by its mean); use init='warm' with "
                         "init_overlap=ρ₀")
    lim = spectral_limits(delta, preprocessing=preprocessing, field=model.field, noise=model.noise, link=model)
    rho, lam_star = float(lim.rho), float(lim.lam_star)
    eigenvalue = float(lim.eigenvalue) if getattr(lim, "eigenvalue", None) is not None else None
    T = getattr(lim, "T", None)
    if T is None:
        T = elementwise(preprocessing, delta, model.field)
    if T is None:
        raise ValueError(f"preprocessing {name!r} is rank-based and has no elementwise T(ŷ) for the DMFT; "
                         "use 'optimal', 'mm', 'trimmed', 'clipped' or a callable")
    if init == "spectral" and not rho > 0:
        raise ValueError(f"δ = {delta} is below the spectral weak-recovery threshold of preprocessing {name!r}: the "
                         "spectral estimator has asymptotic overlap ρ = 0, so the two-stage (spectral start + GD) "
                         "theory does not apply. Increase δ (see phasetorch.theory.spectral_threshold) or use "
                         "init='warm' with a given overlap.")
    return lam_star, rho, eigenvalue, T


def dmft(delta: float, *, step: Optional[float] = None, schedule: Optional[Callable[[int], float]] = None,
         l2: float = 0.0, steps: int, preprocessing="optimal", noise: Optional[float] = None,
         field: Optional[str] = None, model: Optional[SingleIndexModel] = None,
         samples: int = 100_000, replicates: int = 8, seed: int = 0,
         device: Union[str, torch.device, None] = None, dtype: torch.dtype = torch.float32,
         progress: bool = True, init: str = "spectral", init_overlap: Optional[float] = None,
         init_norm: float = 1.0, power_steps: int = 50, power_shift: float = 0.0, mu: str = "auto",
         chunk_size: Optional[int] = None, threads: Optional[int] = 1, distributed: bool = True) -> Prediction:
    r"""DMFT prediction of spectral-initialised (regularised) gradient descent on a single-index model.

    Default model: Gaussian phase retrieval with the intensity loss (regularised Wirtinger flow):
    predicts ``reconstruct(op, y, algorithm="wf", init="spectral", preprocessing=preprocessing,
    step=step, l2=l2)`` on a ``GaussianMeasurement`` (real, or complex with ``field="complex"``:
    E|A_ij|² = 1) with m = δn measurements of ‖x*‖ = 1 and intensities y = |Ax*|² + σε (``noise`` = σ),
    as n → ∞ (theory.md §4, docs/theory.md for the complex field; Chen & Shen, arXiv 2509.23527):
    GD on L(x) = (1/4m) Σ (|a_iᴴx|² − y_i)² + (λ/2)‖x‖² (λ = ``l2``) from x₀ = √(mean y) v̂, with the
    library's gradient 2∂L/∂x̄ (autograd's) in the complex field. ``model=`` any
    :class:`~phasetorch.theory.SingleIndexModel` (e.g. :func:`~phasetorch.theory.amplitude_phase_retrieval`,
    :func:`~phasetorch.theory.linear_regression`, :func:`~phasetorch.theory.logistic_classification`).

    Args:
        delta: δ = m/n. steps: GD iterations T (prediction for t = 0..T).
        step / schedule: constant μ in library units μ/‖x₀‖² (= the theory's η since ‖x₀‖ → 1), or a
            callable t ↦ μ_t for x_{t−1} → x_t, t = 1, 2, … (:mod:`phasetorch.optim.steps`); neither:
            the ``wf`` preset's Candès ramp μ_t = min(1 − e^{−t/330}, 0.2). l2: λ of the ridge term.
        preprocessing: a name of :mod:`phasetorch.init.preprocessing` or a callable T(ŷ); ``"identity"``
            is refused (no outlier eigenvalue in the proportional limit); rank-based names need an
            elementwise form from ``spectral_limits``.
        noise, field: σ and ``"real"``/``"complex"`` of the default model (None: 0 and real; with
            ``model=`` they must agree with the model or be None). model: a SingleIndexModel.
        samples, replicates: Monte-Carlo samples N per replicate; populations (SEs over them; ≥ 8).
        seed, device, dtype, progress: replicate seeds; where / in which precision the populations
            live (kernels are float64; complex fields use the matching complex dtype); tqdm bar.
        init, init_overlap, init_norm, power_steps, power_shift: ``"spectral"`` (default), ``"warm"``
            (x₀ = c(ρ₀x* + √(1−ρ₀²)w), overlap ``init_overlap``, c = ``init_norm``) or ``"power"`` (power
            iteration on D + ``power_shift``·I from a warm start with overlap ``init_overlap`` (default
            0.5), then GD). The shift must make λ₁(D) + c dominate both bulk edges (``mm`` at δ = 4:
            bulk [−1.1, 0.24], λ₁ = 0.437, c = 0.43 converges like 0.77^{2K}); for ``optimal`` the bulk
            reaches T ≥ −999 and power iteration is impractical.
        mu: ``"pathwise"``, ``"stein"`` or ``"auto"``: pathwise for ``optimal``, ``mm``, ``clipped`` and
            the warm start (when the link is smooth), Stein otherwise. chunk_size, threads: see
            :func:`solve_dmft`.

    Returns:
        :class:`~phasetorch.theory.prediction.Prediction` (columns iteration, loss, grad_norm, step,
        norm, rel_error, overlap, inner (= m), q, each with a standard error).

    Warns: RuntimeWarning when the step exceeds the model's stability rule (quartic loss:
    r_max < √(2δ/η), r_max ≈ 5 c₀ max(1 + τ)).
    Raises: ValueError for ``"identity"``, δ below the spectral threshold, a spectral start of a model with
    E y ≤ 0, bad arguments; :class:`phasetorch.errors.DivergenceError` (naming the step) on non-finite values.
    """
    if isinstance(preprocessing, str) and preprocessing == "identity" and init != "warm":
        raise ValueError("preprocessing 'identity' (Candès WF, T(y) = y) has no outlier eigenvalue in the "
                         "proportional limit: T is unbounded, the top eigenvector localises and its overlap ρ → 0 as "
                         "n grows, so the spectral start and this DMFT do not apply. Use 'optimal', 'mm', 'trimmed' "
                         "or 'clipped'.")
    model = resolve_model(model, field, noise)
    name = preprocessing if isinstance(preprocessing, str) else getattr(preprocessing, "__name__", "callable")
    # every number is checked before any work (solve_dmft checks them again, cheaply)
    delta = _check_numbers(delta, steps, l2, samples, replicates, seed, power_steps, power_shift, chunk_size,
                          threads)["delta"]
    if init_overlap is not None:
        check_number(init_overlap, "init_overlap (ρ₀ of the start)", 0.0, high=1.0)
    if step is not None:
        check_number(step, "step (the constant μ, in units of 1/‖x₀‖²)", 0.0, strict=True)
    _check_modes(init, mu, dtype)
    lam_star, rho, eigenvalue, T = _spectral_inputs(delta, preprocessing, model, init, name)
    if mu == "auto":
        smooth = init == "warm" or (isinstance(preprocessing, str) and preprocessing in SMOOTH_PREPROCESSING)
        mu = "pathwise" if smooth and model.smooth_link else "stein"
    return solve_dmft(delta, steps=steps, model=model, lam_star=lam_star, rho=rho, T=T,
                      step=step, schedule=schedule, l2=l2, init=init, init_overlap=init_overlap, init_norm=init_norm,
                      power_steps=power_steps, power_shift=power_shift, mu=mu, samples=samples,
                      replicates=replicates, seed=seed, device=device, dtype=dtype, chunk_size=chunk_size,
                      threads=threads, progress=progress and D.is_main(), distributed=distributed,
                      params=dict(preprocessing=(name if init != "warm" else None), field=model.field,
                                  eigenvalue=eigenvalue))
