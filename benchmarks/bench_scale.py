"""Scale-out costs on the local cluster (`make cluster-up` first; it writes outputs/cluster.env):

1. trials/minute of an Optuna sweep on PostgreSQL run by 1 worker, then by 2 workers started at once on one study
   (each worker 1 torch thread, so 2 workers share 2 cores fairly);
2. the Slurm launcher's per-trial overhead: the same 2-job grid sweep through hydra/launcher=slurm and through
   Hydra's basic launcher, (slurm - basic) / 2.

    .venv/bin/python benchmarks/bench_scale.py [--trials 4] [--epochs 1]

Each trial is a real medexp-train job (synthetic data, small); wall times include process start and MLflow.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(Path(sys.executable).parent / "medexp-train")
SMALL = ["data.num_train=128", "data.num_val=32", "data.num_test=32", "callbacks.progress_bar.refresh_rate=0"]


def cluster_env() -> dict[str, str]:
    path = Path(os.environ.get("MEDEXP_OUTPUT_ROOT", REPO / "outputs")) / "cluster.env"
    if not path.is_file():
        sys.exit(f"error: {path} not found: run make cluster-up first")
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def timed(commands: list[list[str]], env: dict[str, str], folder: Path) -> float:
    """Start the commands at once, wait for all; seconds from the first start to the last end."""
    start = time.perf_counter()
    logs = [open(folder / f"{i}.log", "w") for i in range(len(commands))]
    processes = [subprocess.Popen(c, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
                 for c, log in zip(commands, logs, strict=True)]
    codes = [p.wait() for p in processes]
    elapsed = time.perf_counter() - start
    if any(codes):
        failed = codes.index(next(c for c in codes if c))
        sys.exit(f"error: a command failed ({codes}); see {folder / f'{failed}.log'}")
    return elapsed


def optuna_workers(n_workers: int, trials: int, epochs: int, env: dict[str, str], folder: Path) -> float:
    study = f"bench-{n_workers}w-{uuid.uuid4().hex[:8]}"
    command = [TRAIN, "-m", "hparams_search=optuna", f"hydra.sweeper.storage={env['MEDEXP_PG_URL']}",
               f"hydra.sweeper.study_name={study}", f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.sampler=random",
               f"trainer.max_epochs={epochs}", *SMALL]
    return timed([[*command, f"hydra.sweep.dir={folder}/w{i}"] for i in range(n_workers)], env, folder)


def grid(launcher: str, epochs: int, env: dict[str, str], folder: Path) -> float:
    return timed([[TRAIN, "-m", f"hydra/launcher={launcher}", "optimizer.lr=1e-3,3e-4", f"trainer.max_epochs={epochs}",
                   *SMALL, f"hydra.sweep.dir={folder}/{launcher}"]], env, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, **cluster_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
        subprocess.run([sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
                        "MlflowClient(sys.argv[1]).search_experiments()", env["MLFLOW_TRACKING_URI"]],
                       check=True, capture_output=True)  # migrate the store once, before parallel writers
        one = optuna_workers(1, args.trials, args.epochs, env, folder)
        two = optuna_workers(2, args.trials, args.epochs, env, folder)
        print(f"Optuna on PostgreSQL, {args.trials} trials of {args.epochs} epoch(s):")
        print(f"  1 worker : {args.trials / one * 60:6.2f} trials/min ({one:.1f} s)")
        print(f"  2 workers: {args.trials / two * 60:6.2f} trials/min ({two:.1f} s), x{one / two:.2f}")
        basic, slurm = grid("basic", args.epochs, env, folder), grid("slurm", args.epochs, env, folder)
        print("2-job grid sweep:")
        print(f"  basic launcher: {basic:.1f} s; slurm launcher: {slurm:.1f} s; "
              f"Slurm overhead per trial: {(slurm - basic) / 2:+.1f} s")


if __name__ == "__main__":
    main()
