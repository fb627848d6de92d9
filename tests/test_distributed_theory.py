"""Data-parallel theory over processes (issue 16, item 3): ``theory.dmft`` splits its replicates and
``theory.simulate`` its seeds over the ranks of a process group (gloo on CPU, spawned here); every
rank returns what one process computes alone — means and standard errors formed from the same
per-replicate / per-seed values."""

import pytest
import torch

from phasetorch import distributed as D
from phasetorch import theory

DMFT = dict(steps=6, step=0.1, l2=0.1, samples=3000, replicates=5, seed=3, progress=False, dtype=torch.float64)
SIM = dict(dim=40, seeds=[11, 12, 13], step=0.1, l2=0.1, steps=6, progress=False)


def _worker(rank, size):
    pred = theory.dmft(4.0, **DMFT)
    pred_c = theory.dmft(4.0, field="complex", **{**DMFT, "replicates": 3})
    log = theory.simulate(4.0, **SIM)
    return {"pred": {c: pred[c] for c in ("overlap", "loss", "m")}, "se": pred["overlap_se"],
            "pred_c": pred_c["overlap"], "replicates": pred.params["replicates"],
            "log": {c: log[c] for c in ("overlap", "loss", "rel_error")}, "batch": log.batch_size,
            "seeds": log.config["seeds"], "eig": log.config["spectral_eigenvalue"]}


@pytest.fixture(scope="module")
def single():
    pred = theory.dmft(4.0, **DMFT)
    pred_c = theory.dmft(4.0, field="complex", **{**DMFT, "replicates": 3})
    log = theory.simulate(4.0, **SIM)
    return pred, pred_c, log


@pytest.mark.parametrize("size", [2, 3])
def test_dmft_and_simulate_split_over_ranks_equal_one_process(single, size):
    pred, pred_c, log = single
    res = D.spawn(_worker, size, (), timeout=240.0, group_timeout=60.0)
    res.raise_first()
    for r, out in enumerate(res.results):
        for c, v in out["pred"].items():
            torch.testing.assert_close(v, pred[c], rtol=1e-12, atol=1e-14, msg=f"rank {r} {c}")
        torch.testing.assert_close(out["se"], pred["overlap_se"], rtol=1e-9, atol=1e-14)
        torch.testing.assert_close(out["pred_c"], pred_c["overlap"], rtol=1e-12, atol=1e-14)
        assert out["replicates"] == DMFT["replicates"]
        assert out["batch"] == 3 and out["seeds"] == SIM["seeds"]
        assert out["eig"] == pytest.approx(log.config["spectral_eigenvalue"], rel=1e-12)
        for c, v in out["log"].items():
            torch.testing.assert_close(v, log[c], rtol=1e-10, atol=1e-12, msg=f"rank {r} {c}")


def test_too_few_replicates_for_the_ranks_is_a_clear_error():
    res = D.spawn(_few_worker, 2, (), timeout=120.0, group_timeout=30.0)
    assert all("cannot be split over 2 processes" in str(e) for e in res.errors if e is not None) and \
        sum(e is not None for e in res.errors) == 2


def _few_worker(rank, size):
    theory.dmft(4.0, **{**DMFT, "replicates": 1})
