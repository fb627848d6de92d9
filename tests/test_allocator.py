"""phasetorch.allocator: freed CPU memory stays in the process while a solve runs (glibc's mallopt)."""

import resource
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
