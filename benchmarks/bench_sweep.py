"""What a sweep costs beyond training, and what MLflow logging costs a training run.

1. Per-trial overhead of an in-process Optuna sweep (basic launcher, MLflow on): Hydra composes each job, the
   sweeper asks and tells, the job opens its child run (name, tags, params, per-epoch metrics), reports each epoch
   to its Optuna trial, and the callback records the outcome; the parent's summary is amortised. The task trains
   nothing, so the time per trial is all overhead. Target: < 1 s/trial.
2. MLflow logging overhead: the default ``medexp-train`` run (the embedded synthetic data, 10 epochs) timed as a
   whole command with ``logger=mlflow`` and with ``logger=none``, median of ``--repeats``. Target: < 5 %.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_sweep.py [--trials 20] [--epochs 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_CONFIG = """
defaults:
  - _self_
  - hparams_search: optuna
name: bench
seed: 0
optimized_metric: val/score
optuna_trial: null
paths:
  output_root: ???
tracking: {uri: "${oc.env:MLFLOW_TRACKING_URI}", experiment: bench}
logger: {mlflow: {}}
task: {monitor_mode: max}
optimizer: {lr: 1.0e-3, weight_decay: 0.0}
data: {batch_size: 64}
epochs: 3
hydra:
  sweep: {dir: "${paths.output_root}/multirun", subdir: "${hydra.job.num}"}
  callbacks:
    mlflow_sweep: {_target_: medexp.tracking.sweep_parent.MLflowSweepCallback}
"""


_JOB_STARTS: list[float] = []


def overhead_task(cfg) -> dict:
    """A trial's bookkeeping without its training: child run, params, per-epoch metric + Optuna report."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from medexp.sweeps import optuna_sweeper_config
    from medexp.sweeps.study import build_pruner, load_trial
    from medexp.tracking.store import get_or_create_experiment
    from medexp.tracking.sweep_parent import child_run_context

    _JOB_STARTS.append(time.perf_counter())
    context = child_run_context()
    client = MlflowClient(cfg.tracking.uri)
    experiment_id = get_or_create_experiment(client, cfg.tracking.experiment, cfg.tracking.uri)
    run_id = client.create_run(experiment_id, run_name=context["run_name"], tags=context["tags"]).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in
                                     {"seed": cfg.seed, "lr": cfg.optimizer.lr, "wd": cfg.optimizer.weight_decay,
                                      "batch_size": cfg.data.batch_size}.items()])
    sweeper = optuna_sweeper_config()
    trial = load_trial(sweeper.study_name, sweeper.storage, build_pruner("none", {}), int(cfg.optuna_trial))
    value = 0.0
    for epoch in range(cfg.epochs):
        value = 1.0 - abs(cfg.optimizer.lr - 1e-3) + 0.01 * epoch
        client.log_metric(run_id, "val/score", value, step=epoch)
        trial.report(value, epoch)
        trial.should_prune()
    client.set_terminated(run_id, "FINISHED")
    return {"val/score": value}


def sweep_overhead(n_trials: int, epochs: int) -> tuple[float, float]:
    """(median seconds from one trial's start to the next's, seconds of the whole sweep incl. one-time imports and
    the parent's summary) for an in-process Optuna sweep of ``overhead_task``."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from medexp.sweeps import register_optuna_sweeper

    register_optuna_sweeper()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        conf = tmp_path / "conf"
        shutil.copytree(REPO / "conf" / "hparams_search", conf / "hparams_search")
        (conf / "bench.yaml").write_text(BENCH_CONFIG)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
        _migrate(os.environ["MLFLOW_TRACKING_URI"])
        sys.argv = ["bench", "-m", f"paths.output_root={tmp_path}", f"epochs={epochs}",
                    f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
                    "hydra.sweeper.study_name=bench", "hydra.sweeper.sampler=tpe", "hydra/hydra_logging=none",
                    "hydra/job_logging=none"]
        GlobalHydra.instance().clear()
        start = time.perf_counter()
        hydra.main(version_base="1.3", config_path=str(conf), config_name="bench")(overhead_task)()
        total = time.perf_counter() - start
        GlobalHydra.instance().clear()
    cycles = sorted(b - a for a, b in pairwise(_JOB_STARTS))
    return cycles[len(cycles) // 2], total


def logging_overhead(repeats: int) -> tuple[float, float]:
    """(median seconds with MLflow logging, median without) of the default ``medexp-train`` run as whole commands.

    The store exists already (a user's second run onwards); runs alternate so that drift hits both alike."""
    medexp_train = Path(sys.executable).parent / "medexp-train"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{Path(tmp) / 'mlflow.db'}"}
        _migrate(env["MLFLOW_TRACKING_URI"])
        times: dict[str, list[float]] = {"mlflow": [], "none": []}
        for i in range(repeats):
            for logger in ("mlflow", "none"):
                start = time.perf_counter()
                subprocess.run([str(medexp_train), f"logger={logger}", f"hydra.run.dir={Path(tmp) / f'{logger}{i}'}"],
                               env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times[logger].append(time.perf_counter() - start)
    return statistics.median(times["mlflow"]), statistics.median(times["none"])


def _migrate(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).search_experiments()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-training", action="store_true", help="only the sweep overhead")
    args = p.parse_args()

    per_trial, total = sweep_overhead(args.trials, args.epochs)
    print(f"sweep overhead: {per_trial:.3f} s/trial (median trial-to-trial time, {args.trials} trials, {args.epochs} "
          f"epochs reported each; {total:.1f} s in all incl. imports and summary; target < 1 s/trial)", flush=True)
    if args.skip_training:
        return
    with_mlflow, without = logging_overhead(args.repeats)
    print(f"MLflow logging overhead: {100 * (with_mlflow / without - 1):+.1f}% (default medexp-train as a whole "
          f"command: {with_mlflow:.2f} s with logger=mlflow, {without:.2f} s with logger=none, median of "
          f"{args.repeats}; target < 5%)")


if __name__ == "__main__":
    main()
