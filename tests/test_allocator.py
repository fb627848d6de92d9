"""phasetorch.allocator: freed CPU memory stays in the process while a solve runs (glibc's mallopt and the
caching allocator of csrc/cpu_cache.cpp)."""

import os
import resource
import subprocess
import sys
import threading

import pytest
import torch

import phasetorch as pt
from phasetorch import allocator


class Recorder:
    """Stands in for glibc: records the mallopt/malloc_trim calls."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


APPLY = [("mallopt", allocator.M_MMAP_MAX, 0), ("mallopt", allocator.M_TRIM_THRESHOLD, allocator.RETAIN_TRIM)]
RESTORE = [("mallopt", allocator.M_MMAP_MAX, allocator.DEFAULT_MMAP_MAX),
           ("mallopt", allocator.M_MMAP_THRESHOLD, allocator.AFTER_MMAP_THRESHOLD),
           ("mallopt", allocator.M_TRIM_THRESHOLD, allocator.AFTER_TRIM_THRESHOLD), ("malloc_trim", 0)]


@pytest.fixture
def libc(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(allocator, "_libc", rec)
    monkeypatch.setattr(allocator, "_why", None)
    monkeypatch.delenv(allocator.ENV_SWITCH, raising=False)
    return rec


def test_outermost_block_applies_and_restores_once(libc):
    with allocator.retained() as on:
        assert on and allocator.status()["active"] and allocator.status()["depth"] == 1
        with allocator.retained("cpu") as inner:
            assert inner and allocator.status()["depth"] == 2
        assert libc.calls == APPLY                                   # the inner exit restores nothing
    assert libc.calls == APPLY + RESTORE and not allocator.status()["active"]
    with pytest.raises(RuntimeError):                                # an error inside still restores
        with allocator.retained():
            raise RuntimeError("boom")
    assert libc.calls == 2 * (APPLY + RESTORE) and allocator.status()["depth"] == 0


def test_switch_and_other_devices_leave_malloc_alone(libc, monkeypatch):
    with allocator.retained("meta") as on:
        assert not on
    monkeypatch.setenv(allocator.ENV_SWITCH, "off")
    with allocator.retained() as on:
        assert not on
    assert allocator.status()["reason"] == f"{allocator.ENV_SWITCH}=off"
    assert libc.calls == []


def test_concurrent_blocks_share_one_setting(libc):
    entered, release = threading.Barrier(3), threading.Event()

    def hold():
        with allocator.retained():
            entered.wait()
            release.wait()

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait()
    assert allocator.status()["depth"] == 2 and libc.calls == APPLY
    release.set()
    for t in threads:
        t.join()
    assert libc.calls == APPLY + RESTORE


def test_solvers_run_inside_on_the_cpu_only(libc):
    op = pt.GaussianMeasurement(16, 96, seed=0, dtype=torch.float64)
    y = op(torch.randn(16, dtype=torch.complex128, generator=torch.Generator().manual_seed(1)))
    depth = []
    rec = pt.reconstruct(op, y, "wf", max_iter=3, progress=False, seed=0,
                         callback=lambda t, x, info: depth.append(allocator.status()["depth"]))
    assert depth and min(depth) == 1 and rec.x.shape == (16,)        # the whole loop ran retained
    assert libc.calls == APPLY + RESTORE                              # spectral_init inside: nested, no extra
    libc.calls.clear()
    pt.spectral_init(op, y, seed=0)
    assert libc.calls == APPLY + RESTORE
    libc.calls.clear()
    with pytest.raises(Exception):
        pt.reconstruct("not an operator", y)                          # refused by reconstruct itself
    assert libc.calls == []


@pytest.mark.skipif(not allocator.supported(), reason="needs glibc's mallopt")
def test_a_freed_block_is_reused_without_page_faults(monkeypatch):
    """The real effect on glibc: 64 MiB (above the 32 MiB mmap ceiling, so mmap'd and unmapped on every
    free by default) allocated and freed repeatedly faults its pages about once inside the block, not every time."""
    monkeypatch.delenv(allocator.ENV_SWITCH, raising=False)
    n = (64 << 20) // 4

    def faults(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(rounds):
            torch.ones(n).sum()                                      # allocate, touch every page, free
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    pages = (64 << 20) // resource.getpagesize()
    with allocator.retained():
        faults(2)                            # the heap grows (a small allocation may split a freed block
        inside = min(faults(5) for _ in range(4))   # and make it grow once more): the quietest of 4 windows
    # (glibc's default maps and unmaps such a block at every allocation: 5 × pages faults per window)
    assert inside < pages, f"{inside} page faults inside for 5 reuses of a {pages}-page block"
    assert allocator.status()["depth"] == 0


@pytest.mark.skipif(not allocator.supported(), reason="needs glibc's mallopt")
def test_solves_back_to_back_in_one_block_keep_their_heap(monkeypatch):
    """Each reconstruct returns its freed memory when it ends, so a fresh solve faults its working set in again
    (and its heap keeps growing while it runs: scripts/heap_study.py); a solve repeated inside one outer block
    finds the heap the first one grew and faults almost nothing."""
    monkeypatch.delenv(allocator.ENV_SWITCH, raising=False)
    op = pt.CodedDiffraction((256, 256), 4, seed=0, dtype=torch.float64)
    x = torch.randn(256, 256, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    y = op(x)
    x0 = (x + 0.5 * torch.randn(256, 256, dtype=torch.complex128, generator=torch.Generator().manual_seed(2)))

    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        pt.reconstruct(op, y, "lbfgs", init=x0, max_iter=8, tol=0, progress=False)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults()
    fresh = min(faults() for _ in range(2))
    with allocator.retained():
        faults()
        held = min(faults() for _ in range(2))
    assert fresh > 1000 and held < fresh / 4, (fresh, held)


# ---------------------------------------------------------------------------- the caching allocator (csrc/cpu_cache.cpp)
needs_cache = pytest.mark.skipif(not allocator.cache_available(), reason="the CPU cache does not build here")
BIG = allocator.CACHE_MIN_BYTES // 4 * 4            # float32 elements of a 4 MiB tensor


@pytest.fixture
def cache_on(monkeypatch):
    monkeypatch.delenv(allocator.ENV_SWITCH, raising=False)
    monkeypatch.delenv(allocator.CACHE_SWITCH, raising=False)


def _delta(before):
    after = allocator.cache_stats()
    return {k: after[k] - before[k] for k in ("hits", "misses", "evictions", "mapped", "unmapped")}


@needs_cache
def test_the_cache_hands_a_freed_block_to_the_next_request_of_its_size(cache_on):
    assert not allocator.status()["cache"]["installed"]
    with allocator.retained() as on:
        assert on and allocator.status()["cache"] == {"installed": True, "library": allocator.status()["cache"][
            "library"], "reason": None}
        before = allocator.cache_stats()
        a = torch.ones(BIG)
        where = a.data_ptr()
        assert where % 4096 == 0                                   # page aligned (torch asks for 64 bytes)
        del a
        b = torch.empty(BIG)
        assert b.data_ptr() == where                               # the same block back, pages present
        del b
        c = torch.empty(BIG - BIG // 16)                           # at most 1/8 smaller: that block too
        assert c.data_ptr() == where
        del c
        d = torch.empty(2 * BIG)                                   # larger: a new block
        assert d.data_ptr() != where
        small = torch.ones(1000)                                   # below CACHE_MIN_BYTES: malloc as before
        assert _delta(before) == {"hits": 2, "misses": 2, "evictions": 0, "mapped": 2, "unmapped": 0}
        assert allocator.cache_stats()["cached_bytes"] == 4 * BIG and float(small.sum()) == 1000
        del d
    st = allocator.cache_stats()
    assert st["cached_bytes"] == 0 and not allocator.status()["cache"]["installed"]   # all unmapped at the exit
    assert allocator.status()["cache"]["reason"] == "installed only inside retained()"
    assert _delta(before)["unmapped"] == 2
    assert float(torch.ones(BIG).sum()) == BIG                     # torch's own allocator again


@needs_cache
def test_tensors_outlive_the_block_and_are_unmapped_when_freed(cache_on):
    with allocator.retained():
        kept = torch.arange(BIG, dtype=torch.float32)
        base = allocator.cache_stats()["in_use_bytes"]
    before = allocator.cache_stats()
    assert before["in_use_bytes"] == base and not allocator.status()["cache"]["installed"]
    assert float(kept[-1]) == BIG - 1
    kept.mul_(2)
    assert float(kept[-1]) == 2 * (BIG - 1)
    del kept                                                       # freed after the exit: unmapped, not cached
    after = allocator.cache_stats()
    assert after["in_use_bytes"] == base - 4 * BIG and after["cached_bytes"] == 0
    assert _delta(before)["unmapped"] == 1


@needs_cache
def test_the_cache_stays_within_its_bound(cache_on):
    """Cached bytes never exceed the block's high water; mapped bytes never twice it; a loop over the same
    sizes stops mapping after its first round."""
    g = torch.Generator().manual_seed(0)
    with allocator.retained():
        base = allocator.cache_stats()["in_use_bytes"]
        live = []
        for step in range(200):
            if live and torch.rand((), generator=g) < 0.5:
                live.pop(int(torch.randint(len(live), (), generator=g)))
            else:
                live.append(torch.empty(int(torch.randint(BIG // 4, 6 * BIG, (), generator=g))))
            st = allocator.cache_stats()
            peak = st["high_water_bytes"] - base
            assert st["cached_bytes"] <= st["high_water_bytes"]
            assert st["in_use_bytes"] - base + st["cached_bytes"] <= 2 * peak, step
        assert allocator.cache_stats()["evictions"] > 0 or allocator.cache_stats()["cached_bytes"] > 0
        del live
        for _ in range(2):                                       # 64 MiB and 32 MiB temporaries in turn
            torch.ones(16 << 20).sum(), torch.ones(8 << 20).sum()
        before = allocator.cache_stats()
        for _ in range(5):
            torch.ones(16 << 20).sum(), torch.ones(8 << 20).sum()
        assert _delta(before)["misses"] == 0 and _delta(before)["hits"] == 10


@needs_cache
def test_threads_share_the_cache_safely(cache_on):
    errors = []

    def work(k):
        try:
            for r in range(30):
                t = torch.full((BIG + 1000 * k,), float(k * 100 + r))
                if float(t[0]) != k * 100 + r or float(t[-1]) != k * 100 + r:
                    errors.append((k, r))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
    with allocator.retained():
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert allocator.cache_stats()["hits"] > 0
    assert not errors


@needs_cache
def test_a_solve_maps_nothing_after_its_first_iteration_and_equals_the_plain_path(cache_on, monkeypatch):
    """A coded-diffraction solve (1 and 4 MiB tensors): every large request after the first iteration is a
    cache hit, and the result is bit-identical to the run without the cache."""
    op = pt.CodedDiffraction((256, 256), 4, seed=0, dtype=torch.float64)
    x = torch.randn(256, 256, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    y = op(x)
    x0 = (x + 0.5 * torch.randn(256, 256, dtype=torch.complex128, generator=torch.Generator().manual_seed(2)))
    for preset in ("wf", "lbfgs", "taf"):
        seen = []
        rec = pt.reconstruct(op, y, preset, init=x0, max_iter=8, tol=0, progress=False,
                             callback=lambda t, x_, info: seen.append(allocator.cache_stats()))
        assert all(s["misses"] == seen[1]["misses"] for s in seen[1:]), preset
        assert seen[-1]["hits"] - seen[1]["hits"] >= 6 * 2, preset      # at least two large hits per iteration
        monkeypatch.setenv(allocator.CACHE_SWITCH, "0")
        plain = pt.reconstruct(op, y, preset, init=x0, max_iter=8, tol=0, progress=False)
        monkeypatch.delenv(allocator.CACHE_SWITCH)
        assert torch.equal(rec.x, plain.x), preset


@needs_cache
def test_switches_keep_the_cache_out(cache_on, monkeypatch):
    monkeypatch.setenv(allocator.CACHE_SWITCH, "off")
    with allocator.retained() as on:
        st = allocator.status()
        assert on and st["active"] and not st["cache"]["installed"]        # malloc settings without the cache
        assert st["cache"]["reason"] == f"{allocator.CACHE_SWITCH}=off"
    monkeypatch.delenv(allocator.CACHE_SWITCH)
    monkeypatch.setenv(allocator.ENV_SWITCH, "0")
    with allocator.retained() as on:
        assert not on and not allocator.status()["cache"]["installed"]
        assert allocator.status()["cache"]["reason"] == f"{allocator.ENV_SWITCH}=0"
    assert not allocator.cache_available()


@pytest.mark.skipif(not allocator.supported(), reason="needs glibc's mallopt")
def test_without_a_cxx_compiler_the_block_keeps_the_malloc_settings(cache_on, monkeypatch, tmp_path):
    op = pt.GaussianMeasurement(16, 96, seed=0, dtype=torch.float64)
    y = op(torch.randn(16, dtype=torch.complex128, generator=torch.Generator().manual_seed(1)))
    reference = pt.reconstruct(op, y, "wf", max_iter=5, progress=False, seed=0).x
    try:
        monkeypatch.setenv(allocator.native.ENV_CACHE, str(tmp_path / "cache"))
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
        allocator.reset_cache()
        with allocator.retained() as on:
            st = allocator.status()
            assert on and not st["cache"]["installed"] and "no C++ compiler" in st["cache"]["reason"]
        assert "no C++ compiler" in allocator.status()["cache"]["reason"] and not allocator.cache_available()
        assert torch.equal(pt.reconstruct(op, y, "wf", max_iter=5, progress=False, seed=0).x, reference)
        assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
    finally:
        monkeypatch.undo()
        allocator.reset_cache()


@needs_cache
def test_a_broken_source_is_refused_and_leaves_no_file(cache_on, monkeypatch, tmp_path):
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++\n")
    try:
        monkeypatch.setenv(allocator.native.ENV_CACHE, str(tmp_path / "cache"))
        monkeypatch.setattr(allocator, "CACHE_SOURCE", bad)
        assert allocator.cache_library_path(allocator.cache_compiler()).parent == tmp_path / "cache"
        allocator.reset_cache()
        with allocator.retained():
            reason = allocator.status()["cache"]["reason"]
            assert not allocator.status()["cache"]["installed"] and "failed" in reason
        assert not list((tmp_path / "cache").glob("*"))           # no library, no temporary
    finally:
        monkeypatch.undo()
        allocator.reset_cache()
    assert allocator.cache_available()
    with pytest.raises(RuntimeError, match="installed"):
        with allocator.retained():
            allocator.reset_cache()                                # refused while the cache is torch's allocator


OOM_CHILD = r"""
import resource, sys, torch
from phasetorch import allocator
GiB = 1 << 30
with open("/proc/self/status") as fh:
    vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 3 * GiB // 2, resource.RLIM_INFINITY))
with allocator.retained():
    assert allocator.status()["cache"]["installed"]
    a = torch.ones(GiB // 4)                     # 1 GiB, then cached
    del a
    assert allocator.cache_stats()["cached_bytes"] == GiB
    b = torch.ones(GiB // 4 + GiB // 16)         # 1.25 GiB: fits only once the cache is given back
    assert float(b[-1]) == 1 and allocator.cache_stats()["cached_bytes"] == 0
    try:
        torch.empty(GiB)                         # 4 GiB: over the limit whatever is given back
    except torch.OutOfMemoryError as err:
        assert "phasetorch CPU cache" in str(err), err
    else:
        raise AssertionError("no error")
    st = allocator.cache_stats()
    assert st["in_use_bytes"] == b.numel() * 4, st  # the failed request holds nothing
    del b
print("ok")
"""


@needs_cache
def test_out_of_memory_gives_the_cache_back_first_then_a_clear_error(cache_on):
    """Under an address-space limit: a request that fits only without the cached blocks gets them unmapped and
    succeeds; one that cannot fit raises torch.OutOfMemoryError naming the cache, and the process goes on."""
    res = subprocess.run([sys.executable, "-c", OOM_CHILD], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items()
                              if k not in (allocator.ENV_SWITCH, allocator.CACHE_SWITCH)})
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
