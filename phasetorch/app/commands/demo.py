"""``phasetorch demo``: the main job on bundled data (:func:`phasetorch.app.demo.run_demo`)."""

from __future__ import annotations

import torch

from ..common import Echo, resolve_device
from ..demo import run_demo
from .options import device, nonneg_int

__all__ = ["register", "run"]


def register(sub, common) -> None:
    p = sub.add_parser("demo", parents=[common], help="the main job on bundled data (under a minute on a laptop CPU)",
                       description="Reconstruct a bundled image from simulated coded-diffraction intensities with "
                       "Poisson noise, and overlay the DMFT prediction on a spectral-initialised regularized-WF "
                       "simulation. Writes PNGs and JSON into --out. Runs single-threaded unless --threads is "
                       "given (its tensors are small).")
    p.add_argument("--out", default="demo_output", help="output directory (default: demo_output)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests)")
    p.add_argument("--image", default=None, help="use this image instead of the bundled Grace Hopper photo")
    p.add_argument("--device", type=device, default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    p.set_defaults(handler=run)


def run(args, echo: Echo) -> int:
    before = torch.get_num_threads()
    if not getattr(args, "threads", None):
        # The demo's tensors are small (64×64 FFTs, 2000×500 matrices): extra intra-op threads only add
        # synchronisation, which on a busy machine costs several times the work itself.
        torch.set_num_threads(1)
    try:
        run_demo(out=args.out, quick=args.quick, device=resolve_device(args.device), seed=args.seed,
                 image=args.image, echo=echo)
    finally:
        torch.set_num_threads(before)
    return 0
