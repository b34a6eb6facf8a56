"""Config mistakes met before training are one line on the command line, not a traceback: a ${...} loop (in a
value Hydra's run folder uses, or in one only medexp reads) and a learning rate of inf."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("overrides,line", [
    (["name=${tracking.experiment}"], "error: hydra.run.dir cannot be resolved: the ${...} interpolations it uses "
                                      "lead back to one another (a loop)"),
    (["+a=${b}", "+b=${a}"], "error: a cannot be resolved: the ${...} interpolations it uses lead back"),
    (["optimizer.lr=inf"], "error: optimizer.lr=inf is not valid: it must be a number > 0"),
])
def test_config_mistakes_are_one_line_before_anything_runs(tmp_path, overrides, line):
    env = {**os.environ, "MEDEXP_OUTPUT_ROOT": str(tmp_path / "outputs")}
    done = subprocess.run([str(BIN / "medexp-train"), *overrides, "logger=none"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    text = done.stdout + done.stderr
    assert "Traceback" not in text, text[-3000:]
    assert line in text
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))
