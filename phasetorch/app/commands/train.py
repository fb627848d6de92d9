"""``phasetorch train``: batched multi-seed Gaussian simulation in the theory's units (:func:`phasetorch.app.jobs.train_job`)."""

from __future__ import annotations

import torch

from ...tensors import mean_se
from ..common import Echo, UsageError, resolve_device
from ..figures import has_column, log_column
from ..jobs import TRAIN_ALGORITHMS, noise_sigma, train_job
from .reconstruct import add_distributed_options
from .options import device, noise_spec, nonneg_float, nonneg_int, positive_float, positive_int

#: ``--noise`` of ``train`` and ``theory``: the DMFT's additive Gaussian noise, in the reconstruct syntax.
THEORY_NOISE_HELP = ("gaussian:SIGMA — additive Gaussian noise on the intensities, y = (a·x*)² + SIGMA·ε (in "
                     "these units mean(y) = 1, so it is the relative noise of 'reconstruct --noise gaussian:SIGMA'); "
                     "a bare number SIGMA means the same; none (default). Poisson noise is not in the theory")

__all__ = ["register", "run"]


def register(sub, common) -> None:
    p = sub.add_parser("train", parents=[common], help="multi-seed Gaussian simulation in the theory's units",
                       description="Run spectral-initialised gradient descent (regularized WF with --l2 > 0) on "
                       "Gaussian phase retrieval with ‖x*‖ = 1 (real by default, the DMFT's case; --field complex "
                       "for complex matrices and signals), batched over seeds; writes log.json and log.csv "
                       "(overlap, norm, loss per iteration and seed).")
    p.add_argument("--delta", type=positive_float, required=True, help="samples per dimension δ = m/n")
    p.add_argument("--dim", type=positive_int, required=True, help="dimension n of the signal")
    p.add_argument("--seeds", type=positive_int, default=8, help="number of independent runs (default 8)")
    p.add_argument("--steps", type=positive_int, required=True, help="number of GD steps")
    p.add_argument("--algorithm", choices=TRAIN_ALGORITHMS, default=TRAIN_ALGORITHMS[0],
                   help="wf: gradient descent on the intensity loss (default); af: on the amplitude loss (needs "
                        "--step); the algorithms the theory describes")
    p.add_argument("--l2", type=nonneg_float, default=0.0, help="ridge λ (regularized WF; default 0)")
    p.add_argument("--noise", type=noise_spec, default="none", help=THEORY_NOISE_HELP)
    p.add_argument("--step", type=positive_float, default=None, help="constant step η (default: the library's)")
    p.add_argument("--preprocessing", default="optimal", help="spectral preprocessing (default optimal)")
    p.add_argument("--field", choices=("real", "complex"), default="real",
                   help="real (default; what the DMFT describes) or complex Gaussian matrices and signals")
    p.add_argument("--device", type=device, default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--seed", type=nonneg_int, default=0, help="first seed (seeds S, S+1, …; default 0)")
    p.add_argument("--out", required=True, help="output directory")
    add_distributed_options(p)      # --distributed: the seeds are split over the ranks, rank 0 writes
    p.set_defaults(handler=run)


def run(args, echo: Echo) -> int:
    if args.algorithm != "wf" and args.step is None:
        raise UsageError(f"train --algorithm {args.algorithm} needs a constant --step η (the DMFT describes a "
                         f"constant step; only wf has a default ramp)")
    dev = resolve_device(args.device)
    sigma = noise_sigma(args.noise)
    echo(f"simulating {args.algorithm} (λ = {args.l2:g}) from a spectral start: δ = {args.delta:g}, d = {args.dim}, "
         f"{args.seeds} seeds, {args.steps} steps")
    log = train_job(args.out, delta=args.delta, dim=args.dim, seeds=args.seeds, steps=args.steps, l2=args.l2,
                    step=args.step, preprocessing=args.preprocessing, noise=sigma, field=args.field,
                    algorithm=args.algorithm, seed=args.seed, device=dev, progress=not args.quiet,
                    write=getattr(args, "write", True))
    if has_column(log, "overlap"):
        final = log_column(log, "overlap")[-1].reshape(-1)
        m, se = mean_se(final[torch.isfinite(final)])   # diverged seeds (non-finite) left out
        echo.result(f"result: final overlap {float(m):.4f} ± {float(se):.4f} (mean ± SE over {args.seeds} seeds)")
    echo(f"wrote {args.out}/log.json and {args.out}/log.csv")
    return 0
