"""``phasetorch info``: what this installation runs on and which of its fast paths are in force, and why not.

Versions, the CPU threads torch uses, the CUDA devices, and the native paths: the fused C kernel of the
dense operators (:mod:`phasetorch.physics.kernels`), the CPU caching allocator and glibc's settings of
:mod:`phasetorch.allocator`, and the switches that turn each off. Probing compiles the native libraries
if they are not in the cache yet (a few seconds, once). ``--json`` prints the same as one JSON object, for
bug reports.
"""

from __future__ import annotations

import json
import os
import platform

import torch

from ... import __version__, allocator, replay
from ...physics import kernels
from ..common import Echo

__all__ = ["register", "run", "collect"]


def register(sub, common) -> None:
    p = sub.add_parser("info", parents=[common], help="versions, devices and which native paths are in force",
                       description="Print the versions, CPU threads and CUDA devices, and whether the fused C "
                       "kernel and the CPU caching allocator are available (compiling them on first use), with "
                       "the reason where one is not and the environment switches that turn them off.")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.set_defaults(handler=run)


def collect() -> dict:
    """Everything ``phasetorch info`` prints, as a JSON-ready dict."""
    cuda = torch.cuda.is_available()
    kernel = kernels.status()
    cache_on = allocator.cache_available()          # loads (compiles) the library if it is not loaded yet
    mem = allocator.status()
    switches = {name: os.environ.get(name) for name in (kernels.ENV_SWITCH, allocator.ENV_SWITCH,
                                                         allocator.CACHE_SWITCH, replay.ENV_SWITCH)}
    return {
        "phasetorch": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
        "cuda": {"available": cuda, "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                 if cuda else []},
        "c_kernel": {"in_force": kernel["path"] == "c-kernel", "library": kernel["library"],
                     "reason": kernel["reason"]},
        "cpu_cache": {"available": cache_on, "library": mem["cache"]["library"],
                      "reason": None if cache_on else mem["cache"]["reason"],
                      "min_bytes": allocator.CACHE_MIN_BYTES},
        "malloc_settings": {"available": mem["supported"] and mem["reason"] is None, "reason": mem["reason"]},
        "switches": switches,
    }


def run(args, echo: Echo) -> int:
    info = collect()
    if args.json:
        echo.result(json.dumps(info, indent=2))
        return 0

    def state(ok: bool, reason) -> str:
        return "yes" if ok else f"no ({reason})"
    cuda = info["cuda"]
    lines = [f"phasetorch {info['phasetorch']}, torch {info['torch']}, Python {info['python']}",
             f"platform: {info['platform']}",
             f"CPU threads: {info['cpu_threads']}",
             f"CUDA: {', '.join(cuda['devices']) if cuda['available'] else 'not available'}",
             "fused C kernel (dense operators on the CPU): "
             f"{state(info['c_kernel']['in_force'], info['c_kernel']['reason'])}",
             f"CPU caching allocator (during a solve, blocks ≥ {info['cpu_cache']['min_bytes'] >> 20} MiB): "
             f"{state(info['cpu_cache']['available'], info['cpu_cache']['reason'])}",
             f"glibc malloc settings (during a solve): "
             f"{state(info['malloc_settings']['available'], info['malloc_settings']['reason'])}"]
    for lib in (info["c_kernel"]["library"], info["cpu_cache"]["library"]):
        if lib:
            lines.append(f"  library: {lib}")
    set_ = {k: v for k, v in info["switches"].items() if v is not None}
    lines.append("switches: " + (", ".join(f"{k}={v}" for k, v in set_.items()) if set_ else
                                 f"none set ({', '.join(info['switches'])} = 0 turn the paths off)"))
    for line in lines:
        echo.result(line)
    return 0
