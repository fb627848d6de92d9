"""The CLI's default thread count: the idle cores, measured from the load average (issue 14, item 5)."""

import os

import torch

from phasetorch.app import cli
from phasetorch.app.common import Echo, choose_threads, usable_cores


def test_rule_uses_the_idle_cores():
    assert choose_threads(cores=2, load=0.0)[0] == 2
    assert choose_threads(cores=2, load=0.9)[0] == 1
    assert choose_threads(cores=2, load=7.5)[0] == 1          # never below one
    assert choose_threads(cores=16, load=3.2)[0] == 13
    assert choose_threads(cores=4, load=-1.0)[0] == 4         # never above the cores
    n, why = choose_threads(cores=8, load=2.0)
    assert n == 6 and "load average 2.00" in why and "8 cores" in why


def test_default_reads_the_load_average_and_the_affinity(monkeypatch):
    """Without arguments the rule reads os.getloadavg() and the usable cores; an unknown load means all cores."""
    cores = usable_cores()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert choose_threads() == (cores, f"{cores} of {cores} cores (1-minute load average 0.00)")
    monkeypatch.setattr(os, "getloadavg", lambda: (float(cores) + 3.0, 0.0, 0.0))
    assert choose_threads()[0] == 1

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    n, why = choose_threads()
    assert n == cores and "unknown" in why


def test_cli_sets_the_chosen_threads_unless_told(monkeypatch, capsys):
    before = torch.get_num_threads()
    echo = Echo(False)
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        monkeypatch.setattr(cli, "choose_threads", lambda: (1, "1 of 2 cores (test)"))
        torch.set_num_threads(2)
        assert cli.apply_threads(None, echo, verbose=True) == 1
        assert "threads: 1 of 2 cores (test)" in capsys.readouterr().out
        torch.set_num_threads(1)
        assert cli.apply_threads(2, echo) == 2                # --threads wins
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert cli.apply_threads(None, echo) == 2             # the user's environment wins
    finally:
        torch.set_num_threads(before)
