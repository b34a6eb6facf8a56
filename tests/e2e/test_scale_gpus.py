"""Parallel local jobs get one GPU each: hydra/launcher=joblib with n_jobs = number of GPUs narrows each worker's
CUDA_VISIBLE_DEVICES to a GPU of its own. Checked on the environment each job saw; no GPU needed."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

APP_CONFIG = """
defaults:
  - _self_
hydra:
  sweep:
    dir: ${out}/multirun
    subdir: ${hydra.job.num}
  job:
    chdir: false
  callbacks:
    gpu_per_worker:
      _target_: medexp.distributed.GpuPerWorker
out: ???
x: 0
"""


def record_environment(cfg) -> None:
    """A job: what it saw, and which process it ran in."""
    import time

    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.json").write_text(json.dumps({"gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}))
    time.sleep(0.5)  # both workers busy at once


def fresh_joblib_workers() -> None:
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)


def test_joblib_workers_each_see_one_gpu_of_their_own(tmp_path, monkeypatch):
    import hydra
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    (tmp_path / "app.yaml").write_text(APP_CONFIG)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")  # the GPUs this sweep may use
    monkeypatch.setattr(sys, "argv", ["app", "-m", f"out={tmp_path}", "x=1,2,3,4,5,6", "hydra/launcher=joblib",
                                      "hydra.launcher.n_jobs=2"])
    GlobalHydra.instance().clear()
    # joblib reuses its worker processes across sweeps of one Python process, with the environment they started
    # with: fresh ones for this test, and none of its own (one GPU each, no MLFLOW_TRACKING_URI) left to later tests
    fresh_joblib_workers()
    try:
        hydra.main(version_base="1.3", config_path=str(tmp_path), config_name="app")(record_environment)()
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        fresh_joblib_workers()

    seen = [json.loads(p.read_text()) for p in sorted((tmp_path / "multirun").glob("*/env.json"))]
    assert len(seen) == 6
    by_worker = {}
    for job in seen:
        by_worker.setdefault(job["pid"], set()).add(job["gpus"])
    assert all(len(gpus) == 1 for gpus in by_worker.values()), by_worker  # a worker keeps its GPU
    assert sorted(gpus.pop() for gpus in by_worker.values()) == ["2", "5"], by_worker  # one each, all used
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,5"  # the sweep's own process is not narrowed
