"""A checkpoint write that runs out of room (here a file size limit, as a full disk stops torch's zip writer)
fails in one line, leaves no ``.partial`` file and keeps the previous ``last.ckpt`` whole."""
from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, resource, signal, sys, torch
from pathlib import Path
from medexp.workflows.checkpoints import CheckpointWriteError, atomic_torch_save
folder = Path(sys.argv[1])
atomic_torch_save({"weights": torch.arange(10.0)}, folder / "last.ckpt")  # the previous epoch's, small
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails (EFBIG) instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    atomic_torch_save({"weights": torch.zeros(1_000_000)}, folder / "last.ckpt")
    outcome = "written"
except CheckpointWriteError as error:
    outcome = str(error)
print(json.dumps(outcome))
"""


def test_a_checkpoint_that_does_not_fit_fails_in_one_line_and_keeps_the_previous_one(tmp_path):
    import torch

    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    message = json.loads(done.stdout.strip().splitlines()[-1])
    assert message.startswith(f"cannot write checkpoint last.ckpt in {tmp_path} (the write stopped part way;"), message
    assert "\n" not in message and "the previous checkpoints there are intact" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no .last.ckpt.<pid>.partial
    kept = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert torch.equal(kept["weights"], torch.arange(10.0))
