"""``phasetorch theory``: the DMFT, optionally for the settings of a log (:func:`phasetorch.app.jobs.theory_job`)."""

from __future__ import annotations

from typing import List, Sequence

from ... import io as pio
from ...logs import TrainingLog
from ..common import CLIError, Echo, UsageError, resolve_device
from ..jobs import check_recoverable, check_theory_log, noise_sigma, sup_gap_lines, theory_job
from .options import device, noise_spec, nonneg_float, nonneg_int, positive_float, positive_int
from .train import THEORY_NOISE_HELP

__all__ = ["register", "run"]


def register(sub, common) -> None:
    p = sub.add_parser("theory", parents=[common], help="solve the DMFT and overlay it on simulation logs",
                       description="Solve the DMFT of spectral-initialised (regularized) WF on real Gaussian phase "
                       "retrieval; write prediction.json and overlay.png; with --logs, print the sup gap between "
                       "theory and simulation. Parameters not given default to the first log's config.")
    p.add_argument("--delta", type=positive_float, default=None, help="δ = m/n")
    p.add_argument("--steps", type=positive_int, default=None, help="number of GD steps")
    p.add_argument("--l2", type=nonneg_float, default=None, help="ridge λ (default 0 or the log's)")
    p.add_argument("--step", type=positive_float, default=None, help="constant step η (default the library's "
                   "or the log's)")
    p.add_argument("--preprocessing", default=None, help="spectral preprocessing (default optimal or the log's)")
    p.add_argument("--noise", type=noise_spec, default=None, help=THEORY_NOISE_HELP + " (default: the log's, or "
                   "none)")
    p.add_argument("--samples", type=positive_int, default=50_000, help="Monte-Carlo samples (default 5e4)")
    p.add_argument("--replicates", type=positive_int, default=4, help="independent replicates (default 4)")
    p.add_argument("--logs", nargs="+", metavar="LOG.json", default=None, help="simulation logs to compare with")
    p.add_argument("--device", type=device, default="cpu", help="where the Monte-Carlo population lives: cpu "
                   "(default), cuda or cuda:N")
    p.add_argument("--seed", type=nonneg_int, default=0, help="Monte-Carlo seed (default 0)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(handler=run)


def _read_logs(paths: Sequence[str]) -> List[TrainingLog]:
    """The logs, each a regular file holding a TrainingLog the DMFT describes (one error line otherwise)."""
    logs = []
    for p in paths:
        try:
            pio.check_regular_file(p, "log file")
        except FileNotFoundError as exc:
            raise CLIError(str(exc)) from None
        try:
            log = TrainingLog.from_dict(pio.load_json(p))
        except (ValueError, KeyError, TypeError) as exc:
            raise CLIError(f"{p} is not a phasetorch log ({exc}); give log.json files of phasetorch train") from None
        check_theory_log(log, f"log {p}")
        logs.append(log)
    return logs


#: The settings every log must share with the theory (the prediction is one curve).
SHARED = ("delta", "l2", "step", "preprocessing", "noise")


def run(args, echo: Echo) -> int:
    logs = _read_logs(args.logs or [])
    cfg = dict(logs[0].config) if logs else {}
    for p, log in zip(args.logs[1:] if args.logs else [], logs[1:]):
        diff = [f"{k} = {log.config.get(k)!r} vs {cfg.get(k)!r}" for k in SHARED if log.config.get(k) != cfg.get(k)]
        if diff:
            raise CLIError(f"log {p} has other settings than {args.logs[0]} ({', '.join(diff)}); compare logs of "
                           f"one setting at a time")

    def pick(name: str, value, *aliases):
        if value is not None:
            return value
        for key in (name,) + aliases:
            if key in cfg and cfg[key] is not None:
                return cfg[key]
        return None

    delta = pick("delta", args.delta)
    steps = pick("steps", args.steps, "max_iter")
    if delta is None or steps is None:
        raise UsageError("give --delta and --steps, or --logs LOG.json whose config holds them")
    l2 = pick("l2", args.l2, "lambda")
    step = pick("step", args.step, "eta")
    preprocessing = pick("preprocessing", args.preprocessing) or "optimal"
    noise = noise_sigma(args.noise) if args.noise is not None else float(cfg.get("noise") or 0.0)
    if logs:
        given = {"delta": args.delta, "l2": args.l2, "step": args.step, "preprocessing": args.preprocessing,
                 "noise": None if args.noise is None else noise}
        diff = [f"--{k} {given[k]} (the log has {cfg.get(k)!r})" for k in given
                if given[k] is not None and cfg.get(k) is not None and given[k] != cfg.get(k)]
        if diff:
            raise CLIError(f"{'; '.join(diff)}: the theory would describe another run than the log's; drop the "
                           f"option, or simulate that setting")
    check_recoverable(float(delta), preprocessing, noise)
    echo(f"solving the DMFT: δ = {float(delta):g}, λ = {float(l2 or 0):g}, η = {step if step is not None else 'default'}, "
         f"{int(steps)} steps, {args.samples} samples × {args.replicates} replicates")
    res = theory_job(args.out, delta=float(delta), steps=int(steps), l2=float(l2 or 0.0),
                     step=None if step is None else float(step), preprocessing=preprocessing, noise=noise,
                     samples=args.samples, replicates=args.replicates, seed=args.seed, logs=logs,
                     device=resolve_device(args.device), progress=not args.quiet)
    if res["comparison"] is not None:
        for line in sup_gap_lines(res["comparison"]):
            echo.result(line)
    else:
        echo.result("solved (no --logs given, so no gap to report)")
    echo(f"wrote {', '.join(res['files'])}")
    return 0
