r"""Blind far-field ptychography: joint object, probe (and optionally position) refinement.

:func:`reconstruct_ptycho` fits O, P (K incoherent modes) and optionally the scan positions r_j to
measured patterns I_j ≈ Σ_k |F(P_k ⊙ S_j O)|² (:mod:`phasetorch.physics.ptychography`) with a
mini-batch least-squares maximum-likelihood update in the spirit of LSQ-ML (Odstrčil, Menzel &
Guizar-Sicairos, "Iterative least-squares solver for generalized maximum-likelihood ptychography",
Opt. Express 26, 3108 (2018)), the engine pty-chi and PtychoShelves use:

For each mini-batch b of scan positions (a random partition of the scan per epoch, as in ePIE's
stochastic updates; ``batch_size = J`` gives full-batch updates):

1. Far field Ψ_{jk} = F(P_k ⊙ S_j O), model intensity Î_j = Σ_k|Ψ_{jk}|².
2. Exit-wave correction χ_{jk} = F⁻¹[w_j ⊙ Ψ_{jk}] with, on measured pixels (mask = 1),
   w = √I/√Î − 1 for the amplitude (Gaussian) loss Σ(√Î − √I)², or w = I/Î − 1 for the Poisson
   loss Σ(Î − I log Î) (−∂/∂Ψ̄ of each loss up to a factor), and w = 0 on unmeasured or saturated
   pixels.
3. Preconditioned directions (Odstrčil 2018 eqs. 22–25; α = ``damping``):
   ΔO = Σ_j S_jᵀ(Σ_k P̄_k χ_{jk}) / (Σ_j S_jᵀ Σ_k|P_k|² + α·max),
   ΔP_k = Σ_j (S_j Ō) χ_{jk} / (Σ_j |S_j O|² + α·max).
4. Step sizes (β_O, β_P) of the batch from the 2×2 least-squares problem
   min Σ_{jk} ‖χ_{jk} − β_O P_k ⊙ S_jΔO − β_P ΔP_k ⊙ S_j O‖² (exact in real space: F is unitary),
   clipped to [0, 1] and scaled by ``step`` (0.9, PtychoShelves' β_LSQ scaler).
5. Optional position refinement (``refine_positions``): Δr_j = Re⟨∂_r ψ_j, χ_j⟩ / ‖∂_r ψ_j‖² per
   axis, ∂_r ψ_j = P ⊙ ∂(S_j O)/∂r_j (:func:`~phasetorch.physics.ptychography.patch_gradients`),
   limited to ``max_position_step`` px per update; the mean position is held fixed.

After each epoch, object and probe are extrapolated by e = γ·v + ω·Δ (``momentum`` γ along the
previous step v, ``relaxation`` ω along the epoch's own change Δ; then v ← Δ + e, the step just
taken — heavy-ball momentum as PtychoShelves' LSQ-ML uses it, plus over-relaxation), with the
gradient-based adaptive restart (e = 0 when Δ points against v; O'Donoghue & Candès, Found. Comput.
Math. 15, 715 (2015)),
and modes are orthogonalised (SVD of the K×(h·w) mode matrix: Thibault & Menzel 2013).

The reported data residual (log column ``residual``) is the issue's
R = Σ_{j, pixels} mask·|√Î_j − √I_j| / Σ mask·√I_j. Per epoch it is accumulated from each batch's
model just before that batch's update (what pty-chi, PtychoShelves and ePIE codes report); the
result's ``residual`` is the exact R of the returned object, probe and positions
(:func:`data_residual`).

Memory: the patterns stay where ``data_device`` says (the compute device by default, or the host for
data sets larger than accelerator memory: each batch is then copied over), and every work buffer
holds one batch, so memory scales with ``batch_size``, not with the number of positions.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .allocator import retaining
from .logs import TrainingLog
from .physics.ptychography import (check_interpolation, check_positions, check_zero_frequency, exit_wave_gradients,
                                   exit_waves, extract_patches, fit_object, place_patches, positioned_probes,
                                   positioned_probes_adjoint, propagate, propagate_adjoint, window_margin)
from .tensors import abs2, as_device, check_int, check_number, complex_dtype_of, make_generator, parse_dtype, to_jsonable

LOSSES = ("amplitude", "poisson")
_EPS = 1e-12


@dataclass
class PtychoResult:
    """Outcome of :func:`reconstruct_ptycho`.

    ``object`` (H, W) complex; ``probe`` (K, h, w) complex; ``positions`` (J, 2) window corners in
    object pixels (``positions − offset`` are the input positions' coordinates); ``log`` a
    :class:`~phasetorch.logs.TrainingLog` (columns iteration, residual (running R of the epoch),
    residual_exact (with ``eval_every``), time (seconds of the iteration loop up to that record,
    evaluations left out), step_object, step_probe (mean β per batch), position_change (mean |Δr|
    per coordinate and epoch)); ``residual`` the exact final R; ``time`` seconds of the
    iteration loop (``eval_every`` evaluations left out); ``total_time`` seconds of the whole call
    (set-up, the initial and final R and evaluations included); ``eval_time`` seconds of the
    ``eval_every`` evaluations; ``iterations`` epochs run.
    """

    object: torch.Tensor
    probe: torch.Tensor
    positions: torch.Tensor
    log: TrainingLog
    residual: float
    time: float
    total_time: float
    iterations: int
    offset: torch.Tensor
    initial_residual: float
    config: Dict[str, Any] = field(default_factory=dict)
    eval_time: float = 0.0

    def summary(self) -> Dict[str, Any]:
        """JSON-ready key numbers of the run."""
        return to_jsonable({"iterations": self.iterations, "residual": self.residual,
                            "initial_residual": self.initial_residual, "time_s": self.time,
                            "total_time_s": self.total_time, "object_shape": list(self.object.shape),
                            "probe_shape": list(self.probe.shape), "positions": int(self.positions.shape[0]),
                            "config": self.config})


# ============================================================================ helpers
def _weights(sqrt_i: torch.Tensor, amp: torch.Tensor, model_i: torch.Tensor, mask: Optional[torch.Tensor],
             loss: str) -> torch.Tensor:
    """w of step 2 (module docstring) for one batch: real, shape (B, h, w)."""
    if loss == "amplitude":
        w = sqrt_i / (amp + _EPS) - 1.0
    else:
        w = sqrt_i.square() / (model_i + _EPS) - 1.0
        w = w.clamp(max=1e3)
    return w * mask if mask is not None else w


def data_residual(obj: torch.Tensor, probe: torch.Tensor, positions: torch.Tensor, intensities: torch.Tensor,
                  mask: Optional[torch.Tensor] = None, interpolation: str = "fourier-probe",
                  zero_frequency: str = "corner", chunk: int = 32) -> torch.Tensor:
    r"""R = Σ mask·|√Î − √I| / Σ mask·√I over all positions and pixels (a 0-dim tensor on obj's device).

    Î_j = Σ_k |F(P_k ⊙ S_j O)|²; ``probe`` (h, w) or (K, h, w); ``mask`` None, (h, w) or (J, h, w)
    (True/1 = measured). Computed chunk by chunk (memory ∝ ``chunk``).
    """
    check_interpolation(interpolation)
    check_zero_frequency(zero_frequency)
    probe = probe if probe.dim() == 3 else probe.unsqueeze(0)
    dev = obj.device
    num = torch.zeros((), dtype=torch.float64, device=dev)
    den = torch.zeros((), dtype=torch.float64, device=dev)
    J = positions.shape[0]
    with torch.no_grad():
        for a in range(0, J, chunk):
            b = min(a + chunk, J)
            pos = positions[a:b].to(dev)
            amp = abs2(propagate(exit_waves(obj, probe, pos, interpolation), zero_frequency)).sum(-3).sqrt()
            sq = intensities[a:b].to(dev, amp.dtype).clamp_min(0).sqrt()
            if mask is not None:
                m = (mask if mask.dim() == 2 else mask[a:b]).to(dev, amp.dtype)
                num += ((amp - sq).abs() * m).sum(dtype=torch.float64)
                den += (sq * m).sum(dtype=torch.float64)
            else:
                num += (amp - sq).abs().sum(dtype=torch.float64)
                den += sq.sum(dtype=torch.float64)
    return num / den.clamp_min(1e-300)


def orthogonalize_modes(probe: torch.Tensor) -> torch.Tensor:
    """Orthogonal incoherent modes spanning the same density matrix Σ_k P_k P_kᴴ, by decreasing power
    (SVD of the K×(h·w) mode matrix; Thibault & Menzel 2013)."""
    if probe.shape[0] == 1:
        return probe
    k, h, w = probe.shape
    u, s, vh = torch.linalg.svd(probe.reshape(k, h * w), full_matrices=False)
    return (s.to(vh.dtype)[:, None] * vh).reshape(k, h, w)


def _init_modes(probe: torch.Tensor, modes: int, generator: torch.Generator, fraction: float = 0.05) -> torch.Tensor:
    """Extend a (K0, h, w) probe to ``modes`` modes: each new mode is the first mode times complex Gaussian
    noise, scaled to ``fraction`` of the first mode's power; then orthogonalised."""
    k0 = probe.shape[0]
    if modes <= k0:
        return probe[:modes]
    base = probe[0]
    extra = []
    for _ in range(modes - k0):
        noise = torch.randn(*base.shape, 2, generator=generator, dtype=torch.float64)
        n = torch.view_as_complex(noise).to(probe.device, probe.dtype) * base
        n = n * math.sqrt(fraction * float(abs2(base).sum()) / max(float(abs2(n).sum()), 1e-300))
        extra.append(n)
    return orthogonalize_modes(torch.cat([probe, torch.stack(extra)], 0))


# ============================================================================ engine
@retaining(lambda data, *args, device=None, **kwargs: data.device if device is None else device)
def reconstruct_ptycho(data: torch.Tensor, probe: torch.Tensor, positions: torch.Tensor, *,
                       iterations: int = 50, batch_size: int = 16, object_init: Optional[torch.Tensor] = None,
                       object_shape: Optional[Sequence[int]] = None, margin: int = 8,
                       modes: Optional[int] = None, refine_probe: bool = True, probe_start: int = 0,
                       refine_positions: bool = False, position_start: int = 5, position_step: float = 1.0,
                       max_position_step: float = 0.2, loss: str = "amplitude",
                       mask: Optional[torch.Tensor] = None, saturation: Optional[float] = None,
                       damping: float = 1.0, step: float = 0.9, step_decay: float = 0.0, momentum: float = 0.5, relaxation: float = 1.0,
                       rescale_probe: bool = True, interpolation: str = "fourier-probe",
                       zero_frequency: str = "corner", device: Optional[Union[str, torch.device]] = None,
                       dtype: torch.dtype = torch.float32, data_device: Optional[Union[str, torch.device]] = None,
                       target_residual: Optional[float] = None, eval_every: int = 0, progress: bool = False,
                       callback: Optional[Callable[[int, Dict[str, Any]], Optional[bool]]] = None,
                       seed: Optional[int] = None, generator: Optional[torch.Generator] = None) -> PtychoResult:
    r"""Reconstruct object, probe (and optionally positions) from far-field patterns (module docstring).

    Parameters
    ----------
    data : (J, h, w) measured intensities I_j (photon counts; negative values are clipped to 0).
    probe : (h, w) or (K, h, w) complex initial probe.
    positions : (J, 2) scan positions (row, column) in pixels. With ``object_shape`` they are the
        probe windows' top-left corners in object pixels; without, they may have any offset and are
        shifted by :func:`~phasetorch.physics.ptychography.fit_object` (``margin`` px from each edge);
        the shift is the result's ``offset``.
    iterations : epochs (passes over all positions).
    batch_size : positions per update (random partition each epoch; J = full batch).
    object_init : (H, W) complex initial object (default: ones, i.e. a transparent object).
    modes : number of incoherent probe modes (default: those of ``probe``); extra modes start as 5%
        noise copies of the first.
    refine_probe / probe_start : update the probe from epoch ``probe_start`` on (0-based).
    refine_positions / position_start / position_step / max_position_step : position refinement
        (module docstring step 5), from epoch ``position_start`` on.
    loss : ``"amplitude"`` (Gaussian noise on √I, the default) or ``"poisson"``.
    mask : None, (h, w) or (J, h, w) boolean, True where a pixel was measured.
    saturation : pixels with I ≥ saturation are treated as unmeasured.
    damping : α of the preconditioners (step 3; 1 damps like ePIE's max|P|² normalisation, 0.1 is
        PtychoShelves' default); step : β scaler (step 4), divided by (1 + step_decay·epoch) from epoch 0
        on (a decaying step lowers the floor that stochastic mini-batches leave on R); momentum γ and
        relaxation ω : the epoch extrapolation (module docstring; 0 and 0 switch it off). The defaults
        (batch 16, α = 1, γ = 0.5, ω = 1) are the fastest found on the bundled measured data
        (benchmarks/ptycho_vs_ptychi.py); small noiseless problems converge further with α = 0.01–0.1.
    rescale_probe : scale the initial probe so that the model's total intensity matches the data's.
    interpolation / zero_frequency : the model's sub-pixel shifts and detector convention
        (:mod:`phasetorch.physics.ptychography`).
    device : compute device (default: the data's); dtype : float32 (default) or float64.
    data_device : where the patterns are kept (default: ``device``; ``"cpu"`` streams batches to an accelerator).
    target_residual : stop once an epoch's R is at or below it (checked once per epoch; the exact R when
        ``eval_every`` evaluates it that epoch, else the running R).
    eval_every : every this many epochs also compute the exact R of the current iterate (column
        ``residual_exact``, NaN elsewhere); the time this takes is left out of the ``time`` column
        and of the result's ``time`` (so benchmarks time the reconstruction only).
    progress : a tqdm bar; callback(epoch, record) after each epoch, returning True stops.
    seed / generator : the batch order and the extra-mode noise.

    Returns a :class:`PtychoResult`.
    """
    t_start = time.perf_counter()
    iterations = check_int(iterations, "iterations", 0)
    batch_size = check_int(batch_size, "batch_size", 1)
    margin = check_int(margin, "margin", 2)
    probe_start = check_int(probe_start, "probe_start", 0)
    eval_every = check_int(eval_every, "eval_every", 0)
    position_start = check_int(position_start, "position_start", 0)
    position_step = check_number(position_step, "position_step", 0.0)
    max_position_step = check_number(max_position_step, "max_position_step", 0.0, strict=True)
    damping = check_number(damping, "damping", 0.0)
    step = check_number(step, "step", 0.0, strict=True, high=2.0)
    momentum = check_number(momentum, "momentum", 0.0, high=0.99)
    step_decay = check_number(step_decay, "step_decay", 0.0)
    relaxation = check_number(relaxation, "relaxation", 0.0, high=2.0)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    check_interpolation(interpolation)
    check_zero_frequency(zero_frequency)
    real = parse_dtype(dtype)
    cdt = complex_dtype_of(real)
    gen = make_generator(seed, generator)

    # ---------------------------------------------------------------- inputs
    if not isinstance(data, torch.Tensor) or data.dim() != 3 or data.is_complex():
        raise ValueError(f"data must be a real (J, h, w) tensor of intensities, got "
                         f"{tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__}")
    J, h, w = data.shape
    if not bool(torch.isfinite(data).all()):
        raise ValueError("data contain NaN or inf; set those pixels to 0 and exclude them with mask=")
    if not isinstance(probe, torch.Tensor) or probe.dim() not in (2, 3) or tuple(probe.shape[-2:]) != (h, w):
        raise ValueError(f"probe must be (h, w) or (K, h, w) with (h, w) = ({h}, {w}) the pattern size, got "
                         f"{tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__}")
    if not isinstance(positions, torch.Tensor) or tuple(positions.shape) != (J, 2):
        raise ValueError(f"positions must be a ({J}, 2) tensor (one (row, column) per pattern), got "
                         f"{tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__}")
    dev = as_device(device, "device", default=data.device)
    ddev = as_device(data_device, "data_device", default=dev)
    pos = positions.detach().to(torch.float64).cpu().clone()      # refined in place: never the caller's tensor
    if object_shape is None:
        if object_init is not None:
            raise ValueError("object_init given without object_shape: pass object_shape=object_init.shape[-2:] and "
                             "positions in that object's pixels")
        fitted, shape = fit_object(pos, (h, w), margin)
        offset = fitted[0] - pos[0]
        pos = fitted
    else:
        shape = tuple(int(s) for s in object_shape)
        offset = torch.zeros(2, dtype=torch.float64)
    check_positions(pos, (h, w), shape, interpolation, "reconstruct_ptycho")
    modes = check_int(modes, "modes", 1) if modes is not None else (probe.shape[0] if probe.dim() == 3 else 1)

    intens = data.detach().to(ddev, real).clamp_min(0)
    if saturation is not None:
        saturation = check_number(saturation, "saturation", 0.0, strict=True)
    m = None
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) not in ((h, w), (J, h, w)):
            raise ValueError(f"mask must be a ({h}, {w}) or ({J}, {h}, {w}) boolean tensor (True = measured)")
        m = mask.to(ddev, torch.bool)
    if saturation is not None:
        sat = intens < saturation
        m = sat if m is None else (m & sat)
    maskf = m.to(real) if m is not None else None
    sqrt_i = intens.sqrt()
    if maskf is not None:
        sqrt_i = sqrt_i * maskf

    if object_init is None:
        obj = torch.ones(shape, dtype=cdt, device=dev)
    else:
        if not isinstance(object_init, torch.Tensor) or tuple(object_init.shape) != shape:
            raise ValueError(f"object_init must be a tensor of shape {shape}")
        obj = object_init.detach().to(dev, cdt).clone()
    pr = (probe if probe.dim() == 3 else probe.unsqueeze(0)).detach().to(dev, cdt).clone()
    pr = _init_modes(pr, modes, gen)
    pos_dev = pos.to(dev, real)
    pos_mean0 = pos_dev.mean(0)
    lo, hi = window_margin(interpolation)
    pos_min = torch.tensor([lo, lo], dtype=real, device=dev)
    pos_max = torch.tensor([shape[0] - h - hi, shape[1] - w - hi], dtype=real, device=dev) - 1e-3
    chunk = max(1, min(batch_size, 64))

    def residual_now() -> torch.Tensor:
        return data_residual(obj, pr, pos_dev, intens, m, interpolation, zero_frequency, chunk)

    if rescale_probe:
        with torch.no_grad():
            total = torch.zeros((), dtype=torch.float64, device=dev)
            for a in range(0, J, chunk):
                b = min(a + chunk, J)
                mi = abs2(propagate(exit_waves(obj, pr, pos_dev[a:b], interpolation), zero_frequency)).sum(1)
                if maskf is not None:
                    mi = mi * (maskf if maskf.dim() == 2 else maskf[a:b]).to(dev)
                total += mi.sum(dtype=torch.float64)
            meas = sqrt_i.square().sum(dtype=torch.float64).to(dev)
            pr = pr * (meas / total.clamp_min(1e-300)).sqrt().to(real)
    r0 = residual_now()

    config = {"iterations": iterations, "batch_size": batch_size, "object_shape": list(shape), "modes": modes,
              "refine_probe": refine_probe, "probe_start": probe_start, "refine_positions": refine_positions,
              "position_start": position_start, "position_step": position_step,
              "max_position_step": max_position_step, "loss": loss, "damping": damping, "step": step, "step_decay": step_decay,
              "momentum": momentum, "relaxation": relaxation, "interpolation": interpolation, "zero_frequency": zero_frequency,
              "saturation": saturation, "masked": m is not None, "dtype": str(real).replace("torch.", ""),
              "device": str(dev), "positions": J, "pattern_shape": [h, w], "seed": seed,
              "engine": "minibatch LSQ-ML (Odstrčil 2018)"}
    log = TrainingLog((), config, ["residual", "residual_exact", "time", "step_object", "step_probe",
                                   "position_change"])
    log.append(0, residual=r0, residual_exact=r0, time=0.0, step_object=0.0, step_probe=0.0, position_change=0.0)

    bar = None
    if progress:
        bar = tqdm(total=iterations, desc="ptycho", unit="epoch")

    accelerate = momentum > 0 or relaxation > 0
    v_obj = torch.zeros_like(obj) if accelerate else None
    v_pr = torch.zeros_like(pr) if accelerate else None
    names = ["residual", "residual_exact", "step_object", "step_probe", "position_change"]
    nan = torch.full((), float("nan"), dtype=torch.float64, device=dev)
    t_loop = time.perf_counter()
    t_eval = 0.0                       # seconds spent on exact-residual evaluations (excluded from timings)
    done = 0
    for epoch in range(iterations):
        order = torch.randperm(J, generator=gen)
        batches = order.split(batch_size)
        upd_probe = refine_probe and epoch >= probe_start
        scaler = step / (1.0 + step_decay * epoch)
        upd_pos = refine_positions and epoch >= position_start
        num_r = torch.zeros((), dtype=torch.float64, device=dev)
        den_r = torch.zeros((), dtype=torch.float64, device=dev)
        beta_o_sum = torch.zeros((), dtype=real, device=dev)
        beta_p_sum = torch.zeros((), dtype=real, device=dev)
        shift_sum = torch.zeros((), dtype=real, device=dev)
        obj_before = obj.clone() if accelerate else None
        pr_before = pr.clone() if accelerate else None
        with torch.no_grad():
            for idx_cpu in batches:
                idx = idx_cpu.to(dev) if dev.type != "cpu" else idx_cpu
                didx = idx_cpu.to(ddev) if ddev.type != "cpu" else idx_cpu
                p_b = pos_dev.index_select(0, idx)
                a_b = sqrt_i.index_select(0, didx).to(dev, non_blocking=True)
                m_b = None
                if maskf is not None:
                    m_b = (maskf if maskf.dim() == 2 else maskf.index_select(0, didx)).to(dev, non_blocking=True)
                patches = extract_patches(obj, p_b, (h, w), interpolation)             # (B, h, w)
                pr_b = positioned_probes(pr, p_b, interpolation)                      # (K|B×K, h, w)
                psi_far = propagate(patches.unsqueeze(1) * pr_b, zero_frequency)      # (B, K, h, w)
                model_i = abs2(psi_far).sum(1)
                amp = model_i.sqrt()
                diff = (amp - a_b).abs()
                num_r += (diff * m_b if m_b is not None else diff).sum(dtype=torch.float64)
                den_r += a_b.sum(dtype=torch.float64)
                wgt = _weights(a_b, amp, model_i, m_b, loss)
                chi = propagate_adjoint(psi_far.mul_(wgt.unsqueeze(1)), zero_frequency)  # (B, K, h, w)

                # object direction, preconditioned by the batch's illumination
                g_o = (chi * pr_b.conj()).sum(1)
                illum = abs2(pr_b).sum(-3).expand(g_o.shape[0], h, w)
                num_o = place_patches(g_o, p_b, shape, interpolation)
                den_o = place_patches(illum, p_b, shape, interpolation)
                d_obj = num_o.div_(den_o.add_(damping * den_o.amax() + _EPS))
                u = extract_patches(d_obj, p_b, (h, w), interpolation).unsqueeze(1) * pr_b  # β_O direction field
                a11 = abs2(u).sum()
                b1 = (u.conj() * chi).real.sum()
                if upd_probe:
                    den_p = abs2(patches).sum(0)
                    g_p = positioned_probes_adjoint(chi * patches.conj().unsqueeze(1), p_b, interpolation)
                    d_pr = g_p / (den_p + damping * den_p.amax() + _EPS)
                    # β_P direction field; for 'fourier-probe' the sub-pixel shift of ΔP is neglected here
                    v = patches.unsqueeze(1) * d_pr
                    a22 = abs2(v).sum()
                    a12 = (u.conj() * v).real.sum()
                    b2 = (v.conj() * chi).real.sum()
                    det = a11 * a22 - a12 * a12
                    ok = det > 1e-6 * a11 * a22 + _EPS
                    beta_o = torch.where(ok, (a22 * b1 - a12 * b2) / torch.where(ok, det, 1.0), b1 / (a11 + _EPS))
                    beta_p = torch.where(ok, (a11 * b2 - a12 * b1) / torch.where(ok, det, 1.0), 0.0 * b2)
                    beta_p = beta_p.clamp(0.0, 1.0) * scaler
                else:
                    beta_o = b1 / (a11 + _EPS)
                    beta_p = torch.zeros((), dtype=real, device=dev)
                beta_o = beta_o.clamp(0.0, 1.0) * scaler

                if upd_pos:
                    q = exit_wave_gradients(obj, pr, p_b, interpolation)                # (B, 2, K, h, w)
                    num_s = (q.conj() * chi.unsqueeze(1)).real.sum((-3, -2, -1))
                    den_s = abs2(q).sum((-3, -2, -1))
                    shift = (position_step * num_s / (den_s + _EPS)).clamp(-max_position_step, max_position_step)
                    new_pos = torch.maximum(torch.minimum(p_b + shift, pos_max), pos_min)
                    shift_sum += (new_pos - p_b).abs().sum()
                    pos_dev.index_copy_(0, idx, new_pos)

                obj.add_(d_obj.mul_(beta_o))
                if upd_probe:
                    pr.add_(d_pr.mul_(beta_p))
                beta_o_sum += beta_o
                beta_p_sum += beta_p

            if upd_pos:   # hold the mean position (a common shift only translates the object)
                pos_dev.sub_(pos_dev.mean(0) - pos_mean0)
                pos_dev.copy_(torch.maximum(torch.minimum(pos_dev, pos_max), pos_min))
            if accelerate:
                # epoch extrapolation e = keep·(γ·v + ω·Δ) along the previous step v and this epoch's change Δ,
                # with the gradient-based adaptive restart (O'Donoghue & Candès 2015): keep = 0 when Δ points
                # against v (a 0/1 factor on the device, no host read); v ← Δ + e, the step just taken
                change = obj - obj_before
                keep = ((change.conj() * v_obj).real.sum() >= 0).to(real)
                extra = (v_obj * momentum + change * relaxation) * keep
                obj.add_(extra)
                v_obj.copy_(change.add_(extra))
                if upd_probe:
                    change_p = pr - pr_before
                    extra_p = (v_pr * momentum + change_p * relaxation) * keep
                    pr.add_(extra_p)
                    v_pr.copy_(change_p.add_(extra_p))
            if upd_probe and pr.shape[0] > 1:
                pr = orthogonalize_modes(pr)
        done = epoch + 1
        nb = len(batches)
        t_now = time.perf_counter()
        elapsed = t_now - t_loop - t_eval            # loop seconds so far, evaluations left out
        exact = nan
        if eval_every and done % eval_every == 0:
            exact = residual_now()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t_eval += time.perf_counter() - t_now
        running = (num_r / den_r.clamp_min(1e-300)).to(torch.float64)
        rec = torch.stack([running, exact, (beta_o_sum / nb).to(torch.float64), (beta_p_sum / nb).to(torch.float64),
                           (shift_sum / (2 * J)).to(torch.float64)]).reshape(5, 1)
        log.append_stacked(done, names, rec, elapsed)
        stop = False
        if bar is not None or target_residual is not None or callback is not None:
            vals = rec.reshape(-1).tolist()          # the one host read of this epoch
            record = dict(zip(names, vals), iteration=done)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(R=f"{vals[0]:.4f}")
            current = vals[1] if vals[1] == vals[1] else vals[0]       # the exact R when evaluated
            if target_residual is not None and current <= target_residual:
                stop = True
            if callback is not None and callback(done, record):
                stop = True
        if stop:
            break
    loop_time = time.perf_counter() - t_loop - t_eval
    if bar is not None:
        bar.close()
    r_final = float(residual_now())
    return PtychoResult(object=obj, probe=pr, positions=pos_dev.to(torch.float64), log=log, residual=r_final,
                        time=loop_time, total_time=time.perf_counter() - t_start, iterations=done,
                        offset=offset, initial_residual=float(r0), config=config, eval_time=t_eval)


__all__ = ["reconstruct_ptycho", "PtychoResult", "data_residual", "orthogonalize_modes", "LOSSES"]
