"""The README's Python examples run as written (one namespace, in a temporary directory)."""

import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace = {}
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "run.json").exists()
    assert float(namespace["pt"].metrics.relative_error(namespace["rec"].x, namespace["x"], signal_dims=1).max()) < 1e-6
    assert namespace["theory"].compare(namespace["pred"], namespace["logs"]).verdict == "agree"
