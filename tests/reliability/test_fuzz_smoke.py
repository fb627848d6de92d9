"""Smoke run of the robustness fuzz (scripts/fuzz.py): it completes, tries every input class, writes the
table fields, and no input hangs. Unclear or garbage cases are the report's findings, not failures here."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("operators", "sizes", "intensities", "reconstruct", "noise", "losses", "metrics", "theory", "files", "cli")
FIELDS = ("class", "tried", "clear", "unclear", "garbage", "accepted")


@pytest.mark.slow      # ≈ 10 s: one forked worker per class, 2 cases each
def test_fuzz_smoke_run_completes_without_hangs(tmp_path):
    out = tmp_path / "fuzz.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PHASETORCH_DEBUG", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fuzz.py"), "--count", "2", "--seed", "0",
                           "--json", str(out), "--markdown", str(tmp_path / "fuzz.md"), "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert elapsed < 60, f"the smoke fuzz took {elapsed:.0f} s"
    report = json.loads(out.read_text())
    rows = {r["class"]: r for r in report["classes"]}
    assert set(rows) == set(CLASSES)
    for cls, row in rows.items():
        assert all(k in row for k in FIELDS), row
        assert row["tried"] == 2, row
        assert row["clear"] + row["unclear"] + row["garbage"] + row["accepted"] == row["tried"], row
    hangs = [c for c in report["cases"] if c["hang"]]
    assert not hangs, "cases that hung: " + "; ".join(f"{c['label']} ({c['detail']})" for c in hangs)
    assert len(report["cases"]) == 2 * len(CLASSES)
    assert {c["outcome"] for c in report["cases"]} <= {"clear", "unclear", "garbage", "accepted"}
    table = proc.stdout.splitlines()[0]
    for head in ("input class", "tried", "clear errors", "unclear", "silent garbage"):
        assert head in table
    assert (tmp_path / "fuzz.md").read_text().startswith("# phasetorch fuzz report")
