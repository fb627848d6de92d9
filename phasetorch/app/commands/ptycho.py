r"""``phasetorch ptycho DATA.npz --out DIR``: blind far-field ptychography of a measured data set.

Reads a data set in the ``.npz``/``.npz.bz2`` layout of :mod:`phasetorch.ptycho_data` (e.g. the
bundled ``data/siemens_star_small.npz.bz2``), runs :func:`phasetorch.ptycho.reconstruct_ptycho`
and writes into ``DIR`` (every file atomically: a temporary name in the same folder, then
``os.replace``):

========================  ==================================================================
``object_amplitude.png``  |O| of the scanned region (8-bit grayscale, min–max scaled)
``object_phase.png``      arg O (global phase removed), the same region
``probe.png``             amplitude and phase of every probe mode (matplotlib)
``reconstruction.png``    object amplitude and phase with colour bars (matplotlib)
``convergence.png``       the data residual R per epoch and against time
``log.json``              the :class:`~phasetorch.logs.TrainingLog` (R per epoch, steps, times)
``summary.json``          final R, times, settings, data set and output file names
``reconstruction.pt``     object, probe, positions (``torch.load(weights_only=True)``)
========================  ==================================================================

:func:`add_arguments` adds the options to any ``argparse`` parser and :func:`run_ptycho` runs the
job from the parsed namespace (or keyword arguments); :func:`register` / :func:`run` plug it into
``phasetorch``'s subcommand table (:mod:`phasetorch.app.commands`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict

import torch

from ... import io as pio
from ...physics.ptychography import INTERPOLATIONS, ZERO_FREQUENCY, place_patches
from ...ptycho import LOSSES, reconstruct_ptycho
from ...ptycho_data import load_ptycho
from ...tensors import check_int, check_number
from ..common import resolve_device
from .options import device

__all__ = ["add_arguments", "run_ptycho", "register", "run", "DEFAULTS"]


def _positive_int(text: str) -> int:
    try:
        return check_int(int(text), "value", 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None


def _nonneg_int(text: str) -> int:
    try:
        return check_int(int(text), "value", 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}") from None


def _nonneg_float(text: str) -> float:
    try:
        return check_number(float(text), "value", 0.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text!r}") from None


def _positive_float(text: str) -> float:
    try:
        return check_number(float(text), "value", 0.0, strict=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``ptycho`` job's arguments (DATA, --out and the engine's options) to ``parser``."""
    parser.add_argument("data", metavar="DATA", help="ptychography data set (.npz or .npz.bz2 with keys data, scan, "
                        "probe and optionally mask; e.g. data/siemens_star_small.npz.bz2)")
    parser.add_argument("--out", required=True, help="output directory")
    e = parser.add_argument_group("engine")
    e.add_argument("--iters", type=_nonneg_int, default=DEFAULTS["iters"], help="epochs (default %(default)s)")
    e.add_argument("--batch-size", type=_positive_int, default=DEFAULTS["batch_size"],
                   help="scan positions per update (default %(default)s)")
    e.add_argument("--modes", type=_positive_int, default=DEFAULTS["modes"],
                   help="incoherent probe modes (default: those of the data's probe)")
    e.add_argument("--fixed-probe", action="store_true", help="keep the data's probe (no probe refinement)")
    e.add_argument("--refine-positions", action="store_true", help="refine the scan positions")
    e.add_argument("--position-start", type=_nonneg_int, default=DEFAULTS["position_start"],
                   help="first epoch of position refinement (default %(default)s)")
    e.add_argument("--loss", choices=LOSSES, default=DEFAULTS["loss"], help="noise model (default %(default)s)")
    e.add_argument("--saturation", type=_positive_float, default=None,
                   help="treat pixels with counts ≥ this value as unmeasured")
    e.add_argument("--interpolation", choices=INTERPOLATIONS, default=DEFAULTS["interpolation"],
                   help="sub-pixel shifts (default %(default)s)")
    e.add_argument("--zero-frequency", choices=ZERO_FREQUENCY, default=DEFAULTS["zero_frequency"],
                   help="where each pattern's zero frequency sits (default %(default)s: unshifted FFT layout)")
    e.add_argument("--damping", type=_nonneg_float, default=DEFAULTS["damping"],
                   help="preconditioner damping α (default %(default)s)")
    e.add_argument("--step", type=_positive_float, default=DEFAULTS["step"], help="step scaler (default %(default)s)")
    e.add_argument("--step-decay", type=_nonneg_float, default=DEFAULTS["step_decay"],
                   help="step ← step/(1 + decay·epoch) (default %(default)s)")
    e.add_argument("--momentum", type=_nonneg_float, default=DEFAULTS["momentum"],
                   help="epoch momentum γ < 1 (default %(default)s)")
    e.add_argument("--relaxation", type=_nonneg_float, default=DEFAULTS["relaxation"],
                   help="epoch over-relaxation ω ≤ 2 (default %(default)s; 0 with --momentum 0: plain updates)")
    e.add_argument("--positions", type=_positive_int, default=None, metavar="N",
                   help="use only the N scan points nearest the scan's centre (a quick look)")
    e.add_argument("--device", type=device, default=DEFAULTS["device"], help="cpu, cuda or cuda:N (default cpu)")
    e.add_argument("--dtype", choices=("float32", "float64"), default=DEFAULTS["dtype"],
                   help="precision (default %(default)s)")
    e.add_argument("--seed", type=_nonneg_int, default=DEFAULTS["seed"], help="batch order seed (default %(default)s)")
    return parser


DEFAULTS: Dict[str, Any] = {"iters": 30, "batch_size": 16, "modes": None, "fixed_probe": False,
                            "refine_positions": False, "position_start": 5, "loss": "amplitude", "saturation": None,
                            "interpolation": "fourier-probe", "zero_frequency": "corner", "damping": 1.0,
                            "step": 0.9, "step_decay": 0.0, "momentum": 0.5, "relaxation": 1.0, "positions": None, "device": "cpu",
                            "dtype": "float32", "seed": 0, "quiet": False, "threads": None}


def _options(args: Any = None, **kwargs: Any) -> Dict[str, Any]:
    opts = dict(DEFAULTS)
    if args is not None:
        opts.update({k: v for k, v in vars(args).items() if k != "handler"})
    opts.update(kwargs)
    unknown = sorted(set(opts) - set(DEFAULTS) - {"data", "out", "debug", "command"})
    if unknown:
        raise ValueError(f"unknown ptycho option(s): {', '.join(unknown)}")
    for key in ("data", "out"):
        if not opts.get(key):
            raise ValueError(f"the ptycho job needs {key}= (the data file and the output directory)")
    return opts


def scanned_region(result, threshold: float = 0.05):
    """(row slice, column slice, mask) of the object pixels the probe lit with ≥ ``threshold`` of the peak dose."""
    probe = result.probe
    dose = place_patches(probe.abs().square().sum(0).expand(result.positions.shape[0], *probe.shape[-2:]).float()
                         .cpu(), result.positions.cpu().float(), tuple(result.object.shape), "bilinear")
    lit = dose > threshold * dose.max()
    rows = torch.nonzero(lit.any(1)).flatten()
    cols = torch.nonzero(lit.any(0)).flatten()
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1), lit


def object_images(result):
    """Amplitude and phase (global phase of the lit region removed) of the scanned region, on the CPU."""
    rs, cs, lit = scanned_region(result)
    obj = result.object.detach().cpu().to(torch.complex128)
    ref = torch.angle((obj * lit).sum())
    crop = (obj * torch.exp(-1j * ref))[rs, cs]
    return crop.abs(), torch.angle(crop)


def _figures(result, out: Path, title: str) -> Dict[str, str]:
    pio.use_agg()
    import matplotlib.pyplot as plt

    amp, phase = object_images(result)
    files = {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, img, name, cmap in ((axes[0], amp, "amplitude |O|", "gray"), (axes[1], phase, "phase arg O (rad)", "twilight")):
        im = ax.imshow(img.numpy(), cmap=cmap)
        ax.set_title(name)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title)
    files["reconstruction"] = str(pio.save_figure(fig, out / "reconstruction.png"))

    probe = result.probe.detach().cpu()
    k = probe.shape[0]
    fig, axes = plt.subplots(2, k, figsize=(3.2 * k, 6.2), squeeze=False)
    power = probe.abs().square().sum((-2, -1))
    for i in range(k):
        axes[0, i].imshow(probe[i].abs().numpy(), cmap="magma")
        axes[0, i].set_title(f"mode {i}: |P| ({100 * float(power[i] / power.sum()):.1f}%)")
        axes[1, i].imshow(torch.angle(probe[i]).numpy(), cmap="twilight")
        axes[1, i].set_title("arg P")
        for ax in axes[:, i]:
            ax.axis("off")
    files["probe"] = str(pio.save_figure(fig, out / "probe.png"))

    log = result.log
    it = log["iteration"].numpy()
    r = log["residual"][:, 0].numpy()
    t = log["time"].numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].semilogy(it, r, "o-", ms=3)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("data residual R")
    axes[1].semilogy(t, r, "o-", ms=3)
    axes[1].set_xlabel("time (s)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"R = Σ| |Ψ| − √I | / Σ√I: {result.initial_residual:.4f} → {result.residual:.4f}")
    files["convergence"] = str(pio.save_figure(fig, out / "convergence.png"))
    files["object_amplitude"] = str(pio.save_image(amp, out / "object_amplitude.png"))
    files["object_phase"] = str(pio.save_image(phase, out / "object_phase.png"))
    return files


def run_ptycho(args: Any = None, echo=None, **kwargs: Any) -> Dict[str, Any]:
    """Run the job from a parsed namespace (:func:`add_arguments`) and/or keyword arguments (the option names
    of :data:`DEFAULTS` plus ``data`` and ``out``). Returns the summary dict (also written to summary.json)."""
    opts = _options(args, **kwargs)
    say = echo if echo is not None else (lambda msg: None if opts["quiet"] else print(msg, flush=True))
    if opts.get("threads"):
        torch.set_num_threads(check_int(opts["threads"], "threads", 1))
    t0 = time.perf_counter()
    dev = resolve_device(opts["device"])
    data = load_ptycho(opts["data"])
    if opts["positions"] is not None and opts["positions"] < data.n_positions:
        centre = data.positions.mean(0)
        idx = (data.positions - centre).norm(dim=1).argsort()[:opts["positions"]].sort().values
        data = data.subset(idx)
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    say(f"ptycho: {data.n_positions} patterns of {data.pattern_shape[0]}×{data.pattern_shape[1]} from "
        f"{opts['data']}, probe with {data.probe.shape[0]} mode(s); {opts['iters']} epochs on {dev}")
    dtype = torch.float64 if opts["dtype"] == "float64" else torch.float32
    result = reconstruct_ptycho(
        data.intensities, data.probe, data.positions, iterations=opts["iters"], batch_size=opts["batch_size"],
        modes=opts["modes"], refine_probe=not opts["fixed_probe"], refine_positions=opts["refine_positions"],
        position_start=opts["position_start"], loss=opts["loss"], mask=data.mask, saturation=opts["saturation"],
        damping=opts["damping"], step=opts["step"], step_decay=opts["step_decay"], momentum=opts["momentum"],
        relaxation=opts["relaxation"],
        interpolation=opts["interpolation"], zero_frequency=opts["zero_frequency"], device=dev, dtype=dtype,
        progress=not opts["quiet"], seed=opts["seed"])
    files = _figures(result, out, f"{Path(opts['data']).name}: {result.iterations} epochs, R = {result.residual:.4f}")
    pio.save_json(result.log.to_dict(), out / "log.json")
    files["log"] = str(out / "log.json")
    state = {"object": result.object.detach().cpu(), "probe": result.probe.detach().cpu(),
             "positions": result.positions.detach().cpu(), "offset": result.offset.cpu()}
    files["reconstruction_pt"] = str(pio.atomic_torch_save(state, out / "reconstruction.pt"))
    summary = dict(result.summary(), data=str(opts["data"]), patterns=data.n_positions,
                   pattern_shape=list(data.pattern_shape), residual_reduction=result.initial_residual /
                   max(result.residual, 1e-300), wall_time_s=time.perf_counter() - t0, files=files,
                   options={k: v for k, v in opts.items() if k not in ("out",)})
    files["summary"] = str(out / "summary.json")
    pio.save_json(summary, out / "summary.json")
    line = (f"ptycho: R {result.initial_residual:.4f} → {result.residual:.4f} in {result.iterations} epochs "
            f"({result.time:.1f} s); wrote {out}/")
    if echo is not None and hasattr(echo, "result"):
        echo.result(line)
    else:
        print(line, flush=True)
    return summary


def register(sub, common) -> None:
    """Add the ``ptycho`` subparser to ``phasetorch``'s subcommands (``common``: --quiet/--debug/--threads)."""
    p = sub.add_parser("ptycho", parents=[common], help="blind ptychography of a measured data set",
                       description="Reconstruct object and probe (optionally positions) from far-field ptychography "
                       "patterns (.npz/.npz.bz2: keys data, scan, probe[, mask]); writes object_amplitude.png, "
                       "object_phase.png, reconstruction.png, probe.png, convergence.png, log.json, summary.json "
                       "and reconstruction.pt into --out.")
    add_arguments(p)
    p.set_defaults(handler=run)


def run(args, echo) -> int:
    """The subcommand handler: :func:`run_ptycho`, exit status 0."""
    run_ptycho(args, echo=echo)
    return 0
