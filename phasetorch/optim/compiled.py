r"""The driver's gradient-descent loop compiled: k iterations per call of a C function on a dense CPU operator.

At small n an iteration of :class:`~phasetorch.solve.Driver` is some 75–125 torch operations of a few
microseconds each around one fused pass over A (16 µs at n = 64, m = 8n): the dispatch, not the
arithmetic, sets its cost. For the common case — :class:`~phasetorch.optim.gradient.GradientAlgorithm`
with a fixed-step rule (:class:`~phasetorch.optim.steps.Constant`, :class:`~phasetorch.optim.steps.WFRamp`,
a :class:`~phasetorch.optim.steps.Schedule` of plain numbers), optionally
:class:`~phasetorch.optim.steps.Safeguarded` — on a loss whose evaluation is a prepared fused pass
(:meth:`~phasetorch.losses.PhaseRetrievalLoss.evaluator`: a dense A in the C kernel, a closed-form
pointwise map: intensity, amplitude, Poisson, truncated and reweighted amplitude), with no projection and
no callback, :class:`GradientBlock` runs the same loop in ``pt_gd_block`` (``phasetorch/csrc/fused_dense.c``):
the WF / RWF / AF / TAF / RAF / TWF presets of :func:`phasetorch.reconstruct`, and for
:class:`~phasetorch.optim.lbfgs.LBFGSAlgorithm` (``lbfgs``, the first stage of ``auto``). A step schedule
is called ahead for a block of iterations: it must be a function of t alone (as the torch loop assumes).

What it keeps equal to the torch loop (tested in ``tests/test_compiled.py``):

* every element-wise operation — the trial point x − α∇f, the pass, the scalings of the value and the
  gradient, the safeguard's γ — is the torch loop's, in the same order and precision: the iterates are
  bit-identical while the decisions agree;
* TWF reads A once per evaluation where the torch loop reads it twice (its weights need K = mean|y − |Ax|²|
  over all measurements, known only after the forward product): the fused pass forms the weights with each
  signal's K of its previous evaluation, then the exact K corrects the rows whose E₂ decision it changes
  (their weight, their term of the value, and a sparse adjoint over those rows; a fraction of a percent of
  the rows per iteration at n = 1024). The weights, |r|² and the value's terms are the two-pass ones; the
  gradient is summed in another order, so the runs agree to rounding (about 2e-16 relative over 400
  iterations in float64; tested to 1e-10). The plan is the loss's prepared one (``loss.evaluator``), whose K
  of the start's evaluation seeds the first guess; a signal without a K takes E₂ as met and is corrected.
  ``kernels.CALLS["twf_one_read"]`` / ``["twf_flipped_rows"]`` count the one-read evaluations and the rows
  they corrected;
* L-BFGS forms its direction by the two-loop recursion (torch: the compact form, the same H): the runs
  agree to rounding — the solution to ~1e-9 relative in float64, the statuses — but a sample's stopping
  iteration may differ by a few where the relative-change test sits at a tie (``auto`` in particular);
* the reductions — ‖∇f‖, ‖x‖, the amplitude residual, the frozen-weight trial value of TAF/RAF/TWF, the
  truth metrics, the ridge term — are summed in double in C and in torch's order in torch: equal to
  rounding (a decision taken on a tie may differ; the results then agree to the solver's tolerance);
* the decisions: per-sample divergence (frozen, status ``diverged``), stopping, stall, the log records
  (with the time each was taken), the progress bar; a block returns at once after an iteration with a new
  divergence (so ``on_divergence='raise'`` raises at that iteration) or when no sample is left.

A call runs :data:`FIRST_BLOCK` iterations first, then as many as take about :data:`BLOCK_SECONDS`, at
most :data:`BLOCK` (the host bookkeeping of a call costs a few tens of µs: < 1 µs per iteration at small n,
and a large problem still answers Ctrl-C and moves its progress bar). ``PHASETORCH_COMPILED_LOOP=0`` (read at every run) keeps the torch loop; the kernels switch
``PHASETORCH_KERNELS=0`` turns both off.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..losses import PhaseRetrievalLoss
from ..physics import kernels
from ..physics.base import MeasurementOperator
from ..tensors import switched_off
from .gradient import GradientAlgorithm
from .lbfgs import LBFGSAlgorithm
from .steps import Constant, Safeguarded, Schedule, WFRamp, slack

__all__ = ["GradientBlock", "ENV_SWITCH", "BLOCK", "FIRST_BLOCK", "BLOCK_SECONDS", "enabled"]

#: environment variable that keeps the torch loop when set to 0/false/no/off
ENV_SWITCH = "PHASETORCH_COMPILED_LOOP"
#: most iterations per C call
BLOCK = 256
#: iterations of the first call of a run; later calls run as many as take about BLOCK_SECONDS (at most
#: BLOCK), so that a large problem still answers Ctrl-C and updates its progress bar every fraction of a second
FIRST_BLOCK = 8
BLOCK_SECONDS = 0.2
#: the largest L-BFGS memory the C code takes (``double two[64]`` there)
MAX_MEMORY = 64
#: the maps the block evaluates (all closed forms of the fused kernel except the plain scaling)
MAPS = frozenset({kernels.Map.INTENSITY, kernels.Map.AMPLITUDE, kernels.Map.POISSON,
                  kernels.Map.TRUNCATED_AMPLITUDE, kernels.Map.REWEIGHTED_AMPLITUDE})


def enabled() -> bool:
    """False when ``PHASETORCH_COMPILED_LOOP`` is 0/false/no/off (read at every call)."""
    return not switched_off(ENV_SWITCH)


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _flat_real(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's memory as the real array the C code indexes (complex: interleaved pairs)."""
    return torch.view_as_real(t) if t.is_complex() else t


class GradientBlock:
    """The compiled loop of one driver run (built by :meth:`build`, which says whether it applies).

    It owns contiguous copies of the loop's state — x, ∇f, f, the residual, the weights at x, γ — and
    the driver's device-side bookkeeping tensors (active, status, iterations, divergence marks), which
    it updates in place; :meth:`run` runs iterations t0 + 1 … t0 + k and returns the log records."""

    def __init__(self, loss, plan, rule, safeguard: bool, data, x, f, G, W, res, state, xt, tol: float,
                 log_every: int, f_limit, stall, book: dict, status_codes, twf: bool = False) -> None:
        B, m = plan.B, plan.m
        rdt = plan.real
        self.plan, self.B, self.rdt = plan, B, rdt
        self.ncols = 5 if xt is None else 8
        self.log_every = log_every
        own = lambda t: t.detach().clone().contiguous()          # noqa: E731 (buffers the C code writes)
        self.x, self.G = own(x.reshape(B, -1)), own(G.reshape(B, -1))
        self.f, self.res = own(f.reshape(B)), own(res.reshape(B))
        adaptive = plan.weighted or twf
        self.W = own(W.reshape(B, m)) if adaptive else None
        self.gamma = own(state["sg_gamma"]) if safeguard else None
        self.accepted = own(state["accepted"]) if safeguard else torch.ones(B, dtype=torch.bool)
        self.retry = own(state["retry"]) if safeguard else torch.zeros(B, dtype=torch.bool)
        self.scale = state["scale"].to(rdt).reshape(B).contiguous()
        self.f_limit, self.stall = f_limit.to(rdt).contiguous(), stall.to(rdt).contiguous()
        self.psi = torch.broadcast_to(data.psi, (*plan.batch, m)).reshape(B, m).to(rdt).contiguous()
        self.den = torch.broadcast_to(data.den_psi, plan.batch).reshape(B).to(rdt).contiguous()
        self.xt = None if xt is None else torch.broadcast_to(xt, x.shape).reshape(B, -1).to(x.dtype).contiguous()
        for name, t in book.items():         # active, status, iterations, div_t, div_f, diverged (driver's)
            if not t.is_contiguous():
                raise ValueError(f"the driver's {name} must be contiguous")
        # work space of one iteration
        self.x_try = torch.empty_like(self.x)
        self.z = torch.empty(B, m, dtype=plan.A.dtype)
        self.g = torch.empty_like(self.x)
        self.a2 = torch.empty(B, m, dtype=rdt)
        self.w = torch.empty(B, m, dtype=rdt) if adaptive else None
        self.total = torch.empty(2 * B, dtype=torch.float64)      # Σ w ℓ, then Σ W ℓ (frozen weights)
        self.step = torch.zeros(B, dtype=rdt)          # the step column of the last iteration run
        # TWF: the plan's scratch for the corrected rows and its K of each signal's last evaluation (the start's)
        self.v, self.twf_k = (plan.twf_v, plan.twf_k) if twf else (None, None)

        a = kernels.BlockArgs()
        a.pass_ = plan.args
        a.log_every, a.psi_stride = int(log_every), m
        a.safeguard, a.adaptive, a.truth, a.tol_on = int(safeguard), int(adaptive), int(xt is not None), int(tol > 0)
        a.st_converged, a.st_stalled, a.st_diverged = (int(c) for c in status_codes)
        a.g_scale, a.l2, a.slack, a.tol = loss.adjoint_scale(), float(loss.l2), slack(rdt), float(tol)
        a.gamma_min = 2.0 ** -rule.max_halvings if safeguard else 0.0       # (rule: the L-BFGS algorithm itself)
        flat = {"x": self.x, "G": self.G, "f": self.f, "res": self.res, "W": self.W, "gamma": self.gamma,
                "scale": self.scale, "f_limit": self.f_limit, "stall": self.stall, "psi": self.psi,
                "den_psi": self.den, "xt": self.xt, "active": book["active"], "diverged": book["diverged"],
                "accepted": self.accepted, "retry": self.retry, "status": book["status"],
                "iterations": book["iterations"], "div_t": book["div_t"], "div_f": book["div_f"],
                "x_try": self.x_try, "z": self.z, "g": self.g, "a2": self.a2, "w": self.w, "total": self.total,
                "step": self.step, "v": self.v, "twf_k": self.twf_k}
        for name, t in flat.items():
            setattr(a, name, _ptr(t))
        if twf:
            a.twf, a.alpha_lb, a.alpha_ub, a.alpha_h = 1, *loss.kernel_truncation()
        lbfgs = isinstance(rule, LBFGSAlgorithm)
        if lbfgs:                           # the algorithm's state in C's layout (ring of pairs, newest first)
            M, rl = rule.memory, _flat_real(self.x).reshape(B, -1).shape[1]
            self.lb = {"S": torch.zeros(M, B, rl, dtype=rdt), "Y": torch.zeros(M, B, rl, dtype=rdt),
                       "x_prev": torch.zeros(B, rl, dtype=rdt), "g_prev": torch.zeros(B, rl, dtype=rdt),
                       "d": torch.zeros(B, rl, dtype=rdt), "trial": torch.zeros(B, dtype=rdt),
                       "sy": torch.zeros(M, B, dtype=torch.float64), "count": torch.zeros(B, dtype=torch.int64),
                       "head": torch.zeros(B, dtype=torch.int64), "tries": torch.zeros(B, dtype=torch.int64),
                       "has_prev": torch.zeros(B, dtype=torch.bool)}
            for name, t in self.lb.items():
                setattr(a, name, t.data_ptr())
            a.lbfgs, a.memory, a.max_bt = 1, M, rule.max_backtracks
            a.c_armijo, a.shrink, a.mu0 = rule.c, rule.shrink, rule.mu
        self.args = a
        self.inner = None if lbfgs else rule.rule if safeguard else rule      # the step rule giving μ_t

    # ------------------------------------------------------------------ eligibility
    @classmethod
    def build(cls, driver, tol: float, log_every: int, callback, f, G, W, res, state, f_limit, stall, book,
              status_codes) -> Optional["GradientBlock"]:
        """The compiled loop of ``driver``'s run, or None where it does not apply (the torch loop runs)."""
        if not enabled() or callback is not None or driver.project is not None:
            return None
        alg, loss = driver.alg, driver.loss
        plan = getattr(driver.evaluate, "plan", None)
        twf = plan is not None and plan.block is not None     # TWF's truncation formed in the pass (pt_twf_eval)
        if plan is None or type(alg) not in (GradientAlgorithm, LBFGSAlgorithm) or int(plan.args.map) not in MAPS:
            return None
        if plan.B > kernels.MAX_BLOCK_BATCH or not kernels.available():
            return None
        base, op_type = MeasurementOperator, type(loss.op)
        if not loss.own_evaluation() or type(loss).residual is not PhaseRetrievalLoss.residual or any(
                getattr(op_type, name) is not getattr(base, name)
                for name in ("reduce_sum", "measurement_sum", "measurement_mean")):
            return None                     # the C code sums over all m measurements and has the base residual
        if type(alg) is LBFGSAlgorithm:     # (its trial value is the full one: a loss with fixed weights)
            if loss.adaptive_weights or plan.weighted or alg.memory > MAX_MEMORY:
                return None
            return cls._checked(driver, loss, plan, alg, False, f, G, W, res, state, tol, log_every, f_limit,
                                stall, book, status_codes, False)
        rule = alg.rule
        safeguard = type(rule) is Safeguarded
        inner = rule.rule if safeguard else rule
        if type(inner) not in (Constant, WFRamp, Schedule):
            return None
        return cls._checked(driver, loss, plan, rule, safeguard, f, G, W, res, state, tol, log_every, f_limit,
                            stall, book, status_codes, twf)

    @classmethod
    def _checked(cls, driver, loss, plan, rule, safeguard, f, G, W, res, state, tol, log_every, f_limit, stall,
                 book, status_codes, twf) -> Optional["GradientBlock"]:
        x = driver.x0
        xf = x.reshape(plan.B, -1)
        if not plan.accepts(xf) or G is None or G.dtype != x.dtype or ((plan.weighted or twf) and W is None):
            return None
        if not all(t.device.type == "cpu" for t in (f, G, res, *book.values())):
            return None
        if driver.xt is not None and (driver.xt.dtype.is_complex and not x.dtype.is_complex):
            return None
        return cls(loss, plan, rule, safeguard, driver.data, x, f, G, W, res, state, driver.xt, tol, log_every,
                   f_limit, stall, book, status_codes, twf)

    # ------------------------------------------------------------------ one block
    def mus(self, t0: int, k: int) -> torch.Tensor:
        """μ_t of the wrapped rule for t = t0 + 1 … t0 + k (float64; α = μ_t·s): fewer when a schedule fails
        at a later t (the block stops before it), and the schedule's own error when it fails at t0 + 1 (as
        the torch loop raises it at that iteration)."""
        if self.inner is None:              # L-BFGS: its steps come from its line search
            return torch.zeros(k, dtype=torch.float64)
        out = []                            # (a schedule is called ahead for the block: a function of t alone)
        for t in range(t0 + 1, t0 + k + 1):
            try:
                v = self.inner.alpha(t, 1.0)        # Constant/WFRamp/Schedule: a Python float
            except Exception:
                if not out:
                    raise
                break
            out.append(float(v))
        return torch.tensor(out, dtype=torch.float64)

    def run(self, t0: int, k: int):
        """Iterations t0 + 1 … t0 + k at most. Returns ``(t_done, new divergence?, records)`` with records a
        list of ``(t, values (ncols, B), time)`` (values: views of a fresh tensor, owned by the caller)."""
        mu = self.mus(t0, k)
        k = mu.numel()
        a = self.args
        rec = torch.empty(k // self.log_every + 1, self.ncols, self.B, dtype=self.rdt)
        rec_t = torch.empty(rec.shape[0], dtype=torch.int64)
        rec_time = torch.empty(rec.shape[0], dtype=torch.float64)
        a.k, a.t0, a.mu = int(k), int(t0), mu.data_ptr()
        a.rec, a.rec_t, a.rec_time = rec.data_ptr(), rec_t.data_ptr(), rec_time.data_ptr()
        kernels.gradient_block(a, self.plan.bits)
        n = int(a.n_rec)
        ts, times = rec_t[:n].tolist(), rec_time[:n].tolist()
        shift = kernels.clock_offset()      # the C clock → time.perf_counter's
        return int(a.t_done), bool(a.new_div), [(ts[i], rec[i], times[i] + shift) for i in range(n)]

    @property
    def weights(self) -> Optional[torch.Tensor]:
        return None if self.W is None else self.W.view(*self.plan.batch, self.plan.m)
