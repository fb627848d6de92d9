#!/usr/bin/env python3
r"""phasetorch vs pty-chi: blind far-field ptychography of the bundled Siemens-star data, side by side.

Both sides get the same measured patterns (data/siemens_star_small.npz.bz2, 516 × 128×128), the same
scan positions mapped into the same object grid, the same initial object (ones) and the same initial
probe (the data's probe, scaled so that the model's total intensity equals the data's; pty-chi's
unnormalised FFT gets it divided by √(h·w), which gives identical model intensities). Each side runs
its best engine and settings found on this CPU (pty-chi: LSQ-ML, the engine its docs recommend,
with the batch size and options of the sweep in ``--ptychi-sweep``; phasetorch: its mini-batch
LSQ-ML engine), one process, the same number of torch threads.

The data residual R = Σ| |Ψ| − √I | / Σ √I of the current iterate is evaluated after every epoch for
both sides with each side's own forward model (pty-chi: ``forward_model.forward``; phasetorch:
:func:`phasetorch.ptycho.data_residual`); evaluations are left out of the timed loop. Reported:

* time for each side to first reach pty-chi's final R (and the speed-up),
* R of each side at equal time (pty-chi's R at phasetorch's loop time, phasetorch's R at the same time),
* the Siemens-star resolution: the smallest radius down to which the spokes of each phase image are
  resolved (angular modulation at the spoke frequency ≥ ``--contrast`` of its peak, from the peak inwards),

into ``results/ptycho_vs_ptychi.json`` and the figure ``docs/figures/ptycho_comparison.png``, and
prints the table. Run it in a virtualenv that has pty-chi (``pip install /path/to/phasetorch ptychi``):

    python benchmarks/ptycho_vs_ptychi.py [--threads 1] [--ptychi-epochs 80] [--phasetorch-epochs 40]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from phasetorch import io as pio  # noqa: E402
from phasetorch.physics.ptychography import fit_object, place_patches  # noqa: E402
from phasetorch.ptycho import data_residual, reconstruct_ptycho  # noqa: E402
from phasetorch.ptycho_data import load_ptycho  # noqa: E402

DATA = pio.bundled("siemens_star_small")
MARGIN = 8


# ============================================================================ shared start
def problem():
    d = load_ptycho(DATA)
    J, h, w = d.intensities.shape
    pos, shape = fit_object(d.positions, (h, w), MARGIN)
    probe = d.probe.to(torch.complex64)
    # scale: Σ_pixels |F(P·1)|² = ‖P‖² (unitary FFT) equals the mean pattern total
    probe = probe * (d.intensities.sum(dim=(1, 2)).mean() / probe.abs().square().sum()).sqrt()
    obj = torch.ones(shape, dtype=torch.complex64)
    return d, pos, shape, probe, obj


# ============================================================================ pty-chi
def run_ptychi(d, pos, shape, probe, obj, epochs, batch, gain=0.0, mode="RANDOM", seed=0, log=print):
    import ptychi.api as api
    from ptychi.api.task import PtychographyTask

    J, h, w = d.intensities.shape
    o = api.LSQMLOptions()
    o.data_options.data = d.intensities.numpy()
    o.data_options.fft_shift = False                       # the data's zero frequency is at the corner already
    o.object_options.initial_guess = obj[None].clone()
    o.object_options.pixel_size_m = 1.0
    o.object_options.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    # pty-chi positions are probe centres: centre = corner + (h − 1)/2 in its patch extraction
    o.object_options.position_origin_coords = np.array([(h - 1) / 2, (w - 1) / 2])
    o.probe_options.initial_guess = (probe / math.sqrt(h * w))[None].numpy()   # (OPR modes, modes, h, w)
    o.probe_options.pixel_size_m = 1.0
    o.probe_position_options.position_x_px = pos[:, 1].numpy()
    o.probe_position_options.position_y_px = pos[:, 0].numpy()
    o.probe_position_options.optimizable = False
    o.reconstructor_options.num_epochs = epochs
    o.reconstructor_options.batch_size = batch
    o.reconstructor_options.batching_mode = getattr(api.BatchingModes, mode)
    o.reconstructor_options.momentum_acceleration_gain = gain
    o.reconstructor_options.default_device = api.Devices.CPU
    o.reconstructor_options.random_seed = seed
    t0 = time.perf_counter()
    task = PtychographyTask(o)
    build = time.perf_counter() - t0
    fm = task.reconstructor.forward_model
    sqrt_i = d.intensities.sqrt()

    def residual():
        num = den = 0.0
        with torch.no_grad():
            for a in range(0, J, 64):
                idx = torch.arange(a, min(a + 64, J))
                y = fm.forward(idx)
                s = sqrt_i[idx]
                num += float((y.sqrt() - s).abs().sum(dtype=torch.float64))
                den += float(s.sum(dtype=torch.float64))
        return num / den

    trace = [(0, 0.0, residual())]
    loop = 0.0
    for e in range(epochs):
        t = time.perf_counter()
        task.run(1)
        loop += time.perf_counter() - t
        trace.append((e + 1, loop, residual()))
        if (e + 1) % 10 == 0:
            log(f"  pty-chi epoch {e + 1}: R = {trace[-1][2]:.4f} at {loop:.1f} s")
    obj_out = task.get_data_to_cpu("object")[0]
    probe_out = task.get_data_to_cpu("probe")[0] * math.sqrt(h * w)
    return {"trace": trace, "loop_time": loop, "total_time": build + loop, "object": obj_out, "probe": probe_out,
            "settings": {"engine": "LSQML", "batch_size": batch, "momentum_acceleration_gain": gain,
                         "batching_mode": mode, "epochs": epochs, "noise_model": "gaussian",
                         "patch_interpolation": "fourier (sub-pixel shifts on the probe, default)",
                         "version": getattr(__import__("ptychi"), "__version__", "unknown")}}


# ============================================================================ phasetorch
def run_phasetorch(d, pos, shape, probe, obj, epochs, settings, seed=0):
    r = reconstruct_ptycho(d.intensities, probe, pos, object_shape=shape, object_init=obj, iterations=epochs,
                           eval_every=1, seed=seed, **settings)
    log = r.log
    trace = list(zip(log["iteration"].tolist(), log["time"].tolist(), log["residual_exact"][:, 0].tolist()))
    return {"trace": trace, "loop_time": r.time, "total_time": r.total_time - r.eval_time, "object": r.object,
            "probe": r.probe, "result": r, "settings": dict(settings, epochs=epochs)}


# ============================================================================ metrics
def first_time_at(trace, target):
    """The first logged time at which R ≤ target (linear interpolation between records), or None."""
    for (e0, t0, r0), (e1, t1, r1) in zip(trace, trace[1:]):
        if r1 <= target:
            if r0 <= target:
                return t0
            return t0 + (t1 - t0) * (r0 - target) / (r0 - r1)
    return None


def residual_at(trace, t):
    """R of the last record at or before time t (the iterate one would have by then)."""
    best = trace[0][2]
    for _, ti, ri in trace:
        if ti <= t:
            best = ri
    return best


def lit_mask(positions, probe, shape, threshold=0.2):
    dose = place_patches(probe.abs().square().sum(0).float().expand(positions.shape[0], *probe.shape[-2:]),
                         positions.float(), shape, "bilinear")
    return dose > threshold * dose.max()


def phase_image(obj, lit):
    obj = obj.to(torch.complex128)
    ref = torch.angle((obj * lit).sum())
    ph = torch.angle(obj * torch.exp(-1j * ref))
    return torch.where(lit, ph, torch.zeros_like(ph))


def _sample(img, cy, cx, r, n):
    """Bilinear samples of img on a circle of radius r (n angles)."""
    th = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    y = cy + r * torch.sin(th)
    x = cx + r * torch.cos(th)
    y0, x0 = y.floor().long(), x.floor().long()
    fy, fx = y - y0, x - x0
    H, W = img.shape
    y0, x0 = y0.clamp(0, H - 2), x0.clamp(0, W - 2)
    return ((1 - fy) * (1 - fx) * img[y0, x0] + (1 - fy) * fx * img[y0, x0 + 1] + fy * (1 - fx) * img[y0 + 1, x0]
            + fy * fx * img[y0 + 1, x0 + 1])


def star_geometry(img, lit, r_max):
    """The number of spokes N (dominant angular harmonic) and the star centre (maximising the N-fold
    angular modulation summed over radii), by a coarse-to-fine search around the lit region's centroid."""
    ys, xs = torch.nonzero(lit, as_tuple=True)
    cy, cx = float(ys.double().mean()), float(xs.double().mean())
    n_ang = 2048

    def spokes(y, x):
        spec = sum(torch.fft.rfft(_sample(img, y, x, r, n_ang)).abs() for r in np.linspace(0.5, 0.8, 4) * r_max)
        return int(spec[8:200].argmax()) + 8

    def strength(y, x, n):
        return sum(float(torch.fft.rfft(_sample(img, y, x, r, n_ang)).abs()[n])
                   for r in np.linspace(0.3 * r_max, 0.8 * r_max, 12))

    n_spokes = spokes(cy, cx)
    for _ in range(2):                          # centre for this N, then N again at that centre
        best = (strength(cy, cx, n_spokes), cy, cx)
        for step in (8.0, 4.0, 2.0, 1.0, 0.5):
            improved = True
            while improved:
                improved = False
                for dy, dx in ((step, 0), (-step, 0), (0, step), (0, -step)):
                    s = strength(best[1] + dy, best[2] + dx, n_spokes)
                    if s > best[0]:
                        best = (s, best[1] + dy, best[2] + dx)
                        improved = True
        cy, cx = best[1], best[2]
        n_spokes = spokes(cy, cx)
    return n_spokes, cy, cx


def spoke_contrast(img, cy, cx, n_spokes, radii):
    """Modulation of the N-fold angular harmonic on circles of the given radii: 2|c_N| (radians of phase)."""
    out = []
    for r in radii:
        n = max(256, int(2 * math.pi * r * 4))
        f = torch.fft.rfft(_sample(img, cy, cx, float(r), n))
        out.append(float(2 * f.abs()[n_spokes] / n))
    return np.array(out)


def resolved_radius(contrast, radii, fraction):
    """Smallest radius r such that the contrast stays ≥ fraction · (its peak) for every radius from r out to
    the peak's radius (the spokes are resolved from there outwards)."""
    k = int(np.argmax(contrast))
    peak = float(contrast[k])
    r_res = radii[k]
    for i in range(k, -1, -1):
        if contrast[i] < fraction * peak:
            break
        r_res = radii[i]
    return float(r_res), peak


# ============================================================================ figure
def figure(res, path):
    pio.use_agg()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 10))
    vmax = max(float(res["phase"]["phasetorch"].abs().max()), float(res["phase"]["pty-chi"].abs().max()))
    rs, cs = res["crop"]
    for ax, side in zip(axes[0], ("phasetorch", "pty-chi")):
        m = res["metrics"][side]
        im = ax.imshow(res["phase"][side][rs, cs].numpy(), cmap="gray", vmin=-vmax, vmax=vmax)
        cy, cx = res["centre"]
        circ = plt.Circle((cx - cs.start, cy - rs.start), m["resolved_radius_px"], color="tab:red", fill=False,
                          lw=1.2, ls="--")
        ax.add_patch(circ)
        ax.set_title(f"{side}: phase, R = {m['final_R']:.4f} after {m['loop_time_s']:.0f} s\n"
                     f"spokes resolved down to r = {m['resolved_radius_px']:.0f} px (dashed)")
        ax.axis("off")
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.025, label="phase (rad)")
    ax = axes[1, 0]
    for side, style in (("phasetorch", "o-"), ("pty-chi", "s-")):
        tr = np.array(res["traces"][side])
        ax.semilogy(tr[1:, 1], tr[1:, 2], style, ms=2.5, label=side)
    ax.axhline(res["target_R"], color="gray", ls=":", label="pty-chi final R")
    ax.set_xlabel("reconstruction time (s, CPU)")
    ax.set_ylabel("data residual R")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    tt = {k: res["metrics"][k]["time_to_target_s"] for k in ("phasetorch", "pty-chi")}
    ax.set_title("time to pty-chi's final R: " + ", ".join(
        f"{k} {'n/a' if v is None else f'{v:.1f} s'}" for k, v in tt.items()), fontsize=10)
    ax = axes[1, 1]
    for side, style in (("phasetorch", "-"), ("pty-chi", "--")):
        ax.plot(res["radii"], res["contrast"][side], style, label=side)
        ax.axvline(res["metrics"][side]["resolved_radius_px"], ls=style, color="gray", lw=0.8)
    ax.set_xlabel("radius from the star centre (px)")
    ax.set_ylabel(f"{res['n_spokes']}-spoke phase modulation (rad)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(f"spoke contrast vs radius (resolved: ≥ {res['contrast_fraction']:.0%} of the peak)", fontsize=10)
    fig.suptitle(f"Siemens star, {res['patterns']} measured patterns, same data / initial probe / object, "
                 f"{res['threads']} CPU thread(s)")
    pio.save_figure(fig, path, dpi=110)


def table(res):
    """The comparison as Markdown lines (from the JSON written by :func:`main`)."""
    target = res["target_R"]
    equal_t = res["R_at_equal_time"]["time_s"]
    lines = [f"Siemens star, {res['patterns']} measured patterns, {res['threads']} CPU thread(s), torch "
             f"{res['machine']['torch']}; same data, initial probe and object; R evaluated after every epoch "
             f"(outside the timed loop).", "",
             f"| side | engine / settings | epochs | loop time (s) | s/epoch | final R | time to R = {target:.4f} (s) "
             f"| R at {equal_t:.1f} s | spokes resolved to r (px) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for side in ("phasetorch", "pty-chi"):
        m = res["metrics"][side]
        s = m["settings"]
        desc = (f"minibatch LSQ-ML, batch {s.get('batch_size')}, damping {s.get('damping')}, "
                f"γ {s.get('momentum')}, ω {s.get('relaxation')}" if side == "phasetorch"
                else f"LSQML (pty-chi {s.get('version')}), batch {s['batch_size']}, "
                     f"gain {s['momentum_acceleration_gain']}")
        ttt = m["time_to_target_s"]
        lines.append(f"| {side} | {desc} | {m['epochs']} | {m['loop_time_s']:.1f} | {m['time_per_epoch_s']:.2f} | "
                     f"{m['final_R']:.4f} | {'n/a' if ttt is None else f'{ttt:.1f}'} | "
                     f"{m['R_at_phasetorch_loop_time']:.4f} | {m['resolved_radius_px']:.0f} |")
    sp = res["speedup_to_target"]
    lines += ["", f"Speed-up to pty-chi's final R: {'n/a' if sp is None else f'{sp:.1f}×'}; pty-chi's result "
              f"evaluated in phasetorch's model: R = {res['ptychi_R_in_phasetorch_model']:.4f} (pty-chi's own: "
              f"{target:.4f})."]
    return lines


# ============================================================================ main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ptychi-epochs", type=int, default=80)
    ap.add_argument("--ptychi-batch", type=int, default=96)
    ap.add_argument("--ptychi-gain", type=float, default=0.0)
    ap.add_argument("--phasetorch-epochs", type=int, default=40)
    ap.add_argument("--phasetorch-settings", default=json.dumps({"batch_size": 16, "damping": 1.0, "step": 0.9,
                                                                 "momentum": 0.5, "relaxation": 1.0,
                                                                 "interpolation": "fourier-probe"}))
    ap.add_argument("--contrast", type=float, default=0.5, help="resolved where the spoke contrast ≥ this fraction "
                    "of its peak")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-json", default=str(ROOT / "results" / "ptycho_vs_ptychi.json"))
    ap.add_argument("--out-figure", default=str(ROOT / "docs" / "figures" / "ptycho_comparison.png"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    settings = json.loads(args.phasetorch_settings)

    d, pos, shape, probe, obj = problem()
    J, h, w = d.intensities.shape
    print(f"data: {J} patterns {h}×{w}, object {shape}, {args.threads} thread(s)", flush=True)
    print("phasetorch ...", flush=True)
    pt = run_phasetorch(d, pos, shape, probe, obj, args.phasetorch_epochs, settings, args.seed)
    print(f"  phasetorch: R = {pt['trace'][-1][2]:.4f} after {pt['loop_time']:.1f} s", flush=True)
    print("pty-chi ...", flush=True)
    pc = run_ptychi(d, pos, shape, probe, obj, args.ptychi_epochs, args.ptychi_batch, args.ptychi_gain, seed=args.seed)

    # cross-check: pty-chi's result in phasetorch's model (same conventions) gives pty-chi's own R
    cross = float(data_residual(pc["object"].to(torch.complex64), pc["probe"].to(torch.complex64), pos.float(),
                                d.intensities, interpolation="fourier-probe"))

    target = pc["trace"][-1][2]
    t_pt = first_time_at(pt["trace"], target)
    t_pc = first_time_at(pc["trace"], target)
    equal_t = pt["loop_time"]
    lit = lit_mask(pos, probe, shape)
    phases = {"phasetorch": phase_image(pt["object"].detach().cpu(), lit),
              "pty-chi": phase_image(pc["object"].detach().cpu(), lit)}
    ys, xs = torch.nonzero(lit, as_tuple=True)
    r_max = 0.5 * min(int(ys.max() - ys.min()), int(xs.max() - xs.min()))
    n_spokes, cy, cx = star_geometry(phases["phasetorch"] + phases["pty-chi"], lit, r_max)
    radii = np.arange(2.0, 0.9 * r_max, 1.0)
    contrast = {k: spoke_contrast(v, cy, cx, n_spokes, radii) for k, v in phases.items()}
    metrics = {}
    for side, run in (("phasetorch", pt), ("pty-chi", pc)):
        r_res, outer = resolved_radius(contrast[side], radii, args.contrast)
        metrics[side] = {"final_R": run["trace"][-1][2], "epochs": run["trace"][-1][0],
                         "loop_time_s": run["loop_time"], "total_time_s": run["total_time"],
                         "time_per_epoch_s": run["loop_time"] / max(run["trace"][-1][0], 1),
                         "time_to_target_s": first_time_at(run["trace"], target),
                         "R_at_phasetorch_loop_time": residual_at(run["trace"], equal_t),
                         "resolved_radius_px": r_res, "peak_spoke_contrast_rad": outer, "settings": run["settings"]}
    speedup = (t_pc / t_pt) if (t_pt and t_pc) else None
    res = {"benchmark": "ptycho_vs_ptychi", "data": str(DATA.relative_to(ROOT)), "patterns": J,
           "pattern_shape": [h, w], "object_shape": list(shape), "threads": args.threads,
           "machine": {"python": platform.python_version(), "torch": torch.__version__,
                       "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
           "target_R": target, "speedup_to_target": speedup,
           "R_at_equal_time": {"time_s": equal_t, "phasetorch": metrics["phasetorch"]["R_at_phasetorch_loop_time"],
                               "pty-chi": metrics["pty-chi"]["R_at_phasetorch_loop_time"]},
           "ptychi_R_in_phasetorch_model": cross, "n_spokes": n_spokes, "centre": [cy, cx],
           "contrast_fraction": args.contrast, "metrics": metrics,
           "traces": {"phasetorch": pt["trace"], "pty-chi": pc["trace"]}, "radii": radii.tolist(),
           "contrast": {k: v.tolist() for k, v in contrast.items()}}
    pio.save_json(res, args.out_json)
    rows, cols = torch.nonzero(lit.any(1)).flatten(), torch.nonzero(lit.any(0)).flatten()
    figure(dict(res, phase=phases, crop=(slice(int(rows[0]), int(rows[-1]) + 1),
                                         slice(int(cols[0]), int(cols[-1]) + 1))), args.out_figure)

    lines = table(res)
    print()
    print("\n".join(lines))
    md = Path(args.out_json).with_suffix(".md")
    text = "\n".join(lines) + "\n"
    pio.atomic_write(md, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    print(f"wrote {args.out_json}, {md} and {args.out_figure}")
    return res


if __name__ == "__main__":
    main()
