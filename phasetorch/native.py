r"""Small native libraries compiled at first use and cached on disk (the C kernel, the CPU cache allocator).

One place for what every compiled helper of phasetorch shares: where the libraries are kept
(``$PHASETORCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/phasetorch``, else ``~/.cache/phasetorch``), which
compiler is used (an environment variable such as ``$CC`` or ``$CXX``, else a default name on ``PATH``), a
cache key that changes with everything the binary depends on (source, flags, compiler and its version,
the CPU for ``-march=native``, an ABI number), and an atomic build: the library is compiled under a
temporary name in the cache directory and renamed into place, so concurrent builds of one library by
threads or processes are harmless.

Users: :mod:`phasetorch.physics.kernels` (``csrc/fused_dense.c``) and :mod:`phasetorch.allocator`
(``csrc/cpu_cache.cpp``). A failure to build raises here; each user falls back to its plain path.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

__all__ = ["ENV_CACHE", "cache_dir", "find_compiler", "compiler_version", "machine_key", "library_path", "build"]

#: environment variable overriding the cache directory of the compiled libraries
ENV_CACHE = "PHASETORCH_CACHE_DIR"


def cache_dir() -> Path:
    """Where the compiled libraries are kept: ``$PHASETORCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/phasetorch``,
    else ``~/.cache/phasetorch``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "phasetorch"


def find_compiler(env: str, default: str) -> Optional[str]:
    """The compiler named by ``$env`` (else ``default``) as a full path, or None if it is not there."""
    return shutil.which(os.environ.get(env) or default)


def compiler_version(cc: str) -> str:
    """``cc -dumpfullversion -dumpversion`` (``"?"`` when that cannot be run)."""
    try:
        return subprocess.run([cc, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_key() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    parts.append(line.strip())
                if not line.strip() and len(parts) > 1:
                    break                                      # the first processor is enough
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def library_path(stem: str, key: Iterable[bytes]) -> Path:
    """``<cache_dir>/<stem>-<hash of key>.so``: the key's parts are hashed in order (NUL-separated)."""
    h = hashlib.sha256()
    for part in key:
        h.update(part)
        h.update(b"\0")
    return cache_dir() / f"{stem}-{h.hexdigest()[:20]}.so"


def build(command: Sequence[str], target: Path, timeout: float = 300) -> Path:
    """Run ``command`` with ``{out}`` in it replaced by a temporary file next to ``target``, then rename
    that file to ``target`` atomically. Raises RuntimeError (with the compiler's message) on failure; no
    temporary file is left behind either way."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [tmp if part == "{out}" else part for part in command]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()[:2000]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
