"""What Hydra is given before it composes: a run or sweep folder of each process's own."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

from medexp.hydra_setup import new_folder


def _claim(path: str, start) -> str:
    start.wait()  # every process asks at the same moment
    return new_folder(path)


def test_processes_asking_for_one_folder_at_once_get_one_each(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    base = tmp_path / "runs" / "2026-01-01" / "12-00-00_medexp"
    context = multiprocessing.get_context("fork")
    start = context.Manager().Barrier(6)
    with context.Pool(6) as pool:
        folders = pool.starmap(_claim, [(str(base), start)] * 6)
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
