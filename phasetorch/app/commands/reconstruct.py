"""``phasetorch reconstruct``: an image, or saved measurements + operator → reconstruction, figures, log.

Defaults the command adds to :func:`phasetorch.app.jobs.reconstruction_job`: the projection methods
(and the default algorithm when the problem carries a support, i.e. HIO on Fourier data) get the
object's support and non-negativity and 1000 iterations (300 otherwise); a spectral start uses the
``optimal`` preprocessing unless ``--preprocessing`` says otherwise (:func:`preprocessing_choice`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ...optim.presets import PRESETS
from ..common import Echo, UsageError, fmt_value, resolve_device
from ..jobs import (ALGORITHMS, INITS, PROJECTION_ALGORITHMS, default_algorithm, load_problem, reconstruction_job,
                    simulate_problem)
from .options import positive_float, positive_int, problem_kwargs, problem_options

__all__ = ["register", "run", "preprocessing_choice", "report_lines", "add_distributed_options"]


def add_distributed_options(p) -> None:
    """``--distributed`` and ``--dist-timeout`` (for the commands that run under ``torchrun``)."""
    g = p.add_argument_group("multi-process runs")
    g.add_argument("--distributed", action="store_true",
                   help="run as one rank of a torch.distributed group (launch with torchrun --nproc_per_node N "
                        "-m phasetorch …): gloo on CPU, NCCL with --device cuda; rank 0 writes and prints")
    g.add_argument("--dist-timeout", type=positive_float, default=120.0, metavar="SECONDS",
                   help="a rank that dies or stops answering ends the job on every rank after this long "
                        "(default 120)")


def register(sub, common) -> None:
    p = sub.add_parser("reconstruct", parents=[common, problem_options()],
                       help="reconstruct an image or saved measurements",
                       description="Simulate measurements of IMAGE and reconstruct it, or reconstruct from saved "
                       "--measurements and --operator files. Writes truth.png, init.png, reconstruction.png, "
                       "error.png, grid.png, convergence.png, log.json, summary.json and prints the final "
                       "relative error and PSNR. Images keep their own size and shape unless --size is given.")
    p.add_argument("image", metavar="IMAGE", nargs="?", help="PNG/JPEG image or .pt object")
    p.add_argument("--measurements", metavar="FILE.pt", help="saved intensities (from phasetorch simulate)")
    p.add_argument("--operator", metavar="FILE.pt", help="saved operator (from phasetorch simulate / save_operator)")
    p.add_argument("--force", action="store_true", help="reconstruct even when --operator is not the operator the "
                   "measurements were simulated with (their recorded identity differs)")
    s = p.add_argument_group("solver")
    s.add_argument("--algorithm", choices=ALGORITHMS, default=None,
                   help="default: raf, or hio (with the object's support and non-negativity) for --model fourier")
    s.add_argument("--init", choices=INITS, default=None, help=f"initialisation: {' or '.join(INITS)} (default "
                   "spectral)")
    s.add_argument("--preprocessing", default=None,
                   help="spectral preprocessing of the start: optimal (default; robust on images), preset (the "
                   "algorithm's paper default, built for Gaussian data), or a name (trimmed, weighted, …)")
    s.add_argument("--iters", type=positive_int, default=None,
                   help="maximum iterations (default 300; 1000 for gs/hio, which need many more)")
    s.add_argument("--step", type=positive_float, default=None, help="constant step μ (μ/‖x₀‖²); default: the "
                   "algorithm's schedule")
    p.add_argument("--out", required=True, help="output directory")
    add_distributed_options(p)
    p.set_defaults(handler=run)


def preprocessing_choice(choice: Optional[str], algorithm: Optional[str], init: Optional[str], op) -> Optional[str]:
    """The spectral preprocessing of ``phasetorch reconstruct``: ``optimal`` by default whenever the
    start is spectral, ``preset`` for the algorithm's own (paper) default, or the name given.

    The papers' starts (identity for WF and GS, trimmed for TWF, RWF's truncation) were designed for
    Gaussian data and fail on coded-diffraction images with few masks (the bundled 64² image with 4
    masks: TWF, RWF, GS end at relative error ≈ 1.3 and WF diverges; from the ``optimal`` start
    all four recover it).
    """
    if choice == "preset":     # the paper's own, also on non-Gaussian operators (the library picks optimal there)
        return PRESETS[algorithm or default_algorithm(op)].preprocessing
    if choice is not None:
        return choice
    start = init or PRESETS[algorithm or default_algorithm(op)].init
    return "optimal" if start == "spectral" else None


def report_lines(summary: Dict[str, Any], out) -> Dict[str, str]:
    """{"result": the result line (always printed), "files": the files line (chatter)}."""
    parts = [f"iterations {fmt_value(summary['iterations'], '{}')}"]
    if "status" in summary:
        parts.append(f"status {fmt_value(summary['status'], '{}')}")
    if "residual" in summary:
        parts.append(f"data residual {fmt_value(summary['residual'])}")
    if "rel_error" in summary:
        parts.insert(0, f"relative error {fmt_value(summary['rel_error'])}")
        parts.insert(1, f"PSNR {fmt_value(summary['psnr'], '{:.2f}')} dB")
    return {"result": "result: " + ", ".join(parts) + f" ({summary['seconds']:.1f} s)",
            "files": f"wrote {len(summary['files'])} files to {out}/: "
                     + ", ".join(Path(f).name for f in summary["files"])}


def run(args, echo: Echo) -> int:
    device = resolve_device(args.device)
    distributed = bool(getattr(args, "distributed", False))
    if distributed and device.type == "cuda":                  # the GPU the process group gave this rank
        device = torch.device("cuda", torch.cuda.current_device())
    if distributed and (args.measurements is not None or args.operator is not None):
        raise UsageError("--distributed simulates the problem from IMAGE on every rank (each rank generates only its "
                         "rows of the operator); saved --measurements/--operator files hold the whole operator")
    if args.measurements is not None or args.operator is not None:
        if args.image is not None:
            raise UsageError("give either IMAGE or --measurements/--operator, not both")
        if args.measurements is None or args.operator is None:
            raise UsageError("--measurements and --operator go together (both files written by phasetorch simulate)")
        problem = load_problem(args.measurements, args.operator, device=device, force=args.force)
        if problem["meta"].get("operator_match") is False:
            echo.warn(f"{args.operator} is not the operator {args.measurements} was simulated with (--force given): "
                      f"the reconstruction is of a mismatched problem")
    else:
        if args.image is None:
            raise UsageError("give an IMAGE (PNG/JPEG or .pt object), or --measurements and --operator")
        kwargs = dict(problem_kwargs(args), device=device)
        problem = simulate_problem(args.image, None, echo=echo, distributed=distributed, **kwargs)
    algorithm = args.algorithm
    projection = algorithm in PROJECTION_ALGORITHMS or (algorithm is None and problem["support"] is not None)
    support = problem["support"] if projection else None
    iters = args.iters if args.iters is not None else (1000 if projection else 300)
    summary = reconstruction_job(problem["op"], problem["y"], args.out, x_true=problem["x_true"],
                                 algorithm=algorithm, init=args.init, iters=iters, step=args.step,
                                 preprocessing=preprocessing_choice(args.preprocessing, algorithm, args.init,
                                                                    problem["op"]), support=support,
                                 nonnegative=bool(problem["nonnegative"]) and support is not None, seed=args.seed,
                                 display=problem["display"], progress=not args.quiet, echo=echo,
                                 meta=problem["meta"], write=getattr(args, "write", True))
    lines = report_lines(summary, args.out)
    echo.result(lines["result"])
    echo(lines["files"])
    return 0
