"""``phasetorch sweep``: success rate vs δ for several algorithms, resumable (:mod:`phasetorch.app.sweep`)."""

from __future__ import annotations

from .. import sweep as sw
from ..common import Echo, UsageError, resolve_device
from ..jobs import ALGORITHMS, INITS
from .options import device, nonneg_int, positive_float, positive_int
from .reconstruct import add_distributed_options

__all__ = ["register", "run"]


def register(sub, common) -> None:
    p = sub.add_parser("sweep", parents=[common], help="success rate vs δ (phase transition), resumable",
                       description="Empirical success rate (relative error < --tol) versus δ = m/n on Gaussian "
                       "problems, per algorithm (Wilson 95% intervals), with each algorithm's spectral threshold "
                       "and the injectivity line drawn. Results go to OUT/results.json after every cell; re-running "
                       "skips finished cells, and several sweeps may write into one OUT at once. Grids of more than "
                       f"{sw.MAX_CELLS} cells are refused.")
    p.add_argument("--deltas", default="1:8:0.5", help="start:stop:step (stop included) or a comma list "
                   "(default 1:8:0.5)")
    p.add_argument("--algorithms", default="wf,raf", help=f"comma list from {','.join(ALGORITHMS)} (default wf,raf)")
    p.add_argument("--trials", type=positive_int, default=10, help="problems per cell (default 10)")
    p.add_argument("--dim", type=positive_int, default=64, help="n, the signal dimension (default 64)")
    p.add_argument("--field", choices=("real", "complex"), default="complex", help="default complex")
    p.add_argument("--tol", type=positive_float, default=1e-5, help="success threshold (default 1e-5)")
    p.add_argument("--iters", type=positive_int, default=1000, help="maximum iterations (default 1000)")
    p.add_argument("--init", choices=INITS, default="spectral", help=f"initialisation: {', '.join(INITS)} "
                   "(default spectral)")
    p.add_argument("--preprocessing", default=None, help="spectral preprocessing (default: the algorithm's)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64", help="precision (default float64)")
    p.add_argument("--device", type=device, default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--seed", type=nonneg_int, default=0, help="base seed (default 0)")
    p.add_argument("--out", required=True, help="output directory (resumes what is there)")
    add_distributed_options(p)      # --distributed: the cells are dealt out over the ranks, rank 0 writes
    p.set_defaults(handler=run)


def run(args, echo: Echo) -> int:
    deltas = sw.parse_grid(args.deltas)
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    bad = [a for a in algorithms if a not in ALGORITHMS]
    if bad or not algorithms:
        raise UsageError(f"unknown algorithm(s) {', '.join(bad) or '(none)'} in --algorithms; "
                         f"choose from {', '.join(ALGORITHMS)}")
    dev = resolve_device(args.device)
    echo(f"sweep: {len(algorithms)} algorithm(s) × {len(deltas)} δ values × {args.trials} trials, "
         f"n = {args.dim}, {args.field}")
    results = sw.run_sweep(args.out, deltas, algorithms, trials=args.trials, dim=args.dim, field=args.field,
                           tol=args.tol, max_iter=args.iters, init=args.init, preprocessing=args.preprocessing,
                           dtype=args.dtype, seed=args.seed, device=str(dev), progress=not args.quiet,
                           log=echo)
    if not getattr(args, "write", True):          # a distributed run's other ranks: rank 0 writes the figure
        return 0
    fig_path = sw.write_figure(results, args.out, sw.reference_lines(args.field, args.preprocessing))
    for line in sw.summary_lines(results, algorithms):
        echo.result(line)
    echo(f"wrote {results.path} and {fig_path}")
    return 0
