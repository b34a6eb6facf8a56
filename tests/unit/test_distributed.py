"""DDP inside Hydra multiruns: one job's ranks cannot take down the next job."""
from __future__ import annotations

import subprocess
import sys

# In its own interpreter: Lightning's observer SIGKILLs the process that started the ranks.
_JOB_THEN_NEXT = """
import subprocess, sys, time
from lightning_fabric.strategies.launchers.subprocess_script import _launch_process_observer
from medexp.distributed import end_job_distributed

# a rank of the finished job that aborts in its teardown, after rank 0 has moved on
rank = subprocess.Popen([sys.executable, "-c", "import os, signal, time; time.sleep(1); os.abort()"])
_launch_process_observer([rank])
end_job_distributed()
time.sleep(7)  # longer than the observer's 5 s period
print("next job runs", rank.returncode)
"""


def test_a_rank_that_aborts_after_its_job_ended_does_not_kill_the_sweep():
    done = subprocess.run([sys.executable, "-c", _JOB_THEN_NEXT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "next job runs -6"
