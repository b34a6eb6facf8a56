"""What Hydra is given before it composes: a run or sweep folder of each process's own."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from medexp.hydra_setup import new_folder

# Separate interpreters, not forked workers: forking a test process that already runs torch/MLflow threads can
# deadlock on a lock held at the fork (it hung CI for an hour)
_CLAIM = """
import sys, time
from pathlib import Path
from medexp.hydra_setup import new_folder
while not Path(sys.argv[2]).exists():  # every process asks at the same moment
    time.sleep(0.001)
print(new_folder(sys.argv[1]))
"""


def test_processes_asking_for_one_folder_at_once_get_one_each(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    base = tmp_path / "runs" / "2026-01-01" / "12-00-00_medexp"
    start = tmp_path / "start"
    claims = [subprocess.Popen([sys.executable, "-c", _CLAIM, str(base), str(start)], stdout=subprocess.PIPE,
                               text=True) for _ in range(6)]
    time.sleep(2)  # let every interpreter reach its wait
    start.touch()
    folders = [claim.communicate(timeout=60)[0].strip() for claim in claims]
    assert all(claim.returncode == 0 for claim in claims)
    assert len(set(folders)) == 6
    assert sorted(Path(f).name for f in folders) == sorted(
        ["12-00-00_medexp", *(f"12-00-00_medexp-{n}" for n in range(2, 7))])
    assert all(Path(f).is_dir() for f in folders)


def test_a_process_asking_again_gets_the_folder_it_has(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    (tmp_path / "run").mkdir()  # another run's
    first = new_folder(str(tmp_path / "run"))
    assert first == str(tmp_path / "run-2")
    assert new_folder(str(tmp_path / "run")) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run-2"]


def test_ranks_of_one_ddp_run_share_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    (tmp_path / "ddp").mkdir()  # rank 0 made it
    assert new_folder(str(tmp_path / "ddp")) == str(tmp_path / "ddp")
