"""``phasetorch simulate``: image → measurements.pt + operator.pt (:func:`phasetorch.app.jobs.simulate_problem`)."""

from __future__ import annotations

from ..common import Echo
from ..jobs import simulate_problem
from .options import problem_kwargs, problem_options

__all__ = ["register", "run"]


def register(sub, common) -> None:
    p = sub.add_parser("simulate", parents=[common, problem_options()], help="image → measurements.pt + operator.pt",
                       description="Simulate intensity measurements of an image and save them with the operator "
                       "(the file pair 'phasetorch reconstruct --measurements --operator' reads; format in "
                       "phasetorch.io).")
    p.add_argument("image", metavar="IMAGE", help="PNG/JPEG image or .pt object (e.g. data/complex_object.pt); "
                   "kept at its own size unless --size is given")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(handler=run)


def run(args, echo: Echo) -> int:
    prob = simulate_problem(args.image, args.out, echo=echo, **problem_kwargs(args))
    op = prob["op"]
    echo.result(f"simulated {op.m} intensities of a {tuple(prob['x_true'].shape)} object "
                f"({type(op).__name__}, δ = {op.delta:g}, noise {args.noise or 'none'})")
    echo(f"wrote {args.out}/measurements.pt, {args.out}/operator.pt, {args.out}/truth.png; "
         f"reconstruct with: phasetorch reconstruct --measurements {args.out}/measurements.pt "
         f"--operator {args.out}/operator.pt --out DIR")
    return 0
