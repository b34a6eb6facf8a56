"""Whole-command speed of medexp-train against a plain PyTorch loop, the way a user times them.

Both are started as processes, one after the other in this run, on the same data, model, batch size, epochs,
optimizer and seed; timed from launch to exit (imports, MLflow store creation and test evaluation included).
Prints, per model: wall seconds and their ratio medexp/plain, peak memory ratio, training images/s, medexp's
seconds from launch to its first training step and that time's share of the whole run, and both test accuracies.

    python benchmarks/bench_train.py --npz ../shared/data/pneumoniamnist.npz            # CPU: cnn x30, resnet18_small x5
    python benchmarks/bench_train.py --npz ... --device cuda --models cnn:10 --resident  # GPU, data resident
    python benchmarks/bench_train.py --npz ... --device cuda --models resnet18_small:3 --precision 32 bf16-mixed
    python benchmarks/bench_train.py --npz ... --augmentation none light --kernels   # + kernels per training step
(both sides run at the same precision and augmentation; resnet18 is torchvision's with the 28 px stem)
    (MEDEXP_TRAIN=<path> picks another medexp-train executable)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def timed(command: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and stdout of one command run to completion."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}")
    return wall, usage.ru_maxrss / 1024, out


def medexp_command(npz: Path, model: str, epochs: int, run_dir: Path, device: str, precision: str,
                   logger: str, augmentation: str = "none", kernels: bool = False) -> list[str]:
    return [os.environ.get("MEDEXP_TRAIN", str(BIN / "medexp-train")), f"logger={logger}", "data=pneumoniamnist", f"data.root={npz.parent}", f"model={model}",
            *(["model.small_input=true"] if model == "resnet18" else []),
            "optimizer=adam", "optimizer.lr=1e-3", f"augmentation={augmentation}", "data.batch_size=128",
            f"trainer.max_epochs={epochs}", f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
            f"trainer.precision={precision}", f"hydra.run.dir={run_dir}",
            *(["+callbacks.kernels._target_=kernel_count.KernelCounter", f"+callbacks.kernels.out={run_dir}/kernels.json"]
              if kernels else [])]


def test_accuracy(uri: str, run_dir: Path) -> float:
    """medexp's test accuracy, read back from MLflow or, with logger=csv, from the run's metrics.csv."""
    csv = run_dir / "csv" / "metrics.csv"
    if csv.is_file():
        import csv as csvlib

        rows = [r for r in csvlib.DictReader(csv.open()) if r.get("test/accuracy")]
        return float(rows[-1]["test/accuracy"]) if rows else float("nan")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return runs[0].data.metrics.get("test/accuracy", float("nan"))


def bench(npz: Path, model: str, epochs: int, device: str, resident: bool, precision: str, work: Path,
          logger: str = "mlflow", augmentation: str = "none", kernels: bool = False) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    plain_cmd = [sys.executable, str(HERE / "plain_loop.py"), str(npz), "--model", model, "--epochs", str(epochs),
                 "--device", device, "--precision", precision, "--augmentation", augmentation,
                 *(["--resident"] if resident else []), *(["--kernels"] if kernels else [])]
    plain_wall, plain_rss, plain_out = timed(plain_cmd, env)
    plain = json.loads(plain_out.strip().splitlines()[-1])
    run_dir = work / f"{model}-{precision}-{augmentation}"
    uri = f"sqlite:///{work / f'mlflow-{model}-{precision}-{augmentation}.db'}"  # a fresh store, as on a user's first run
    launched = time.time()
    # benchmarks/ on the path: the kernel counter is a callback of this folder
    medexp_env = {**env, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": os.pathsep.join(
        p for p in (str(HERE), env.get("PYTHONPATH")) if p)}
    medexp_wall, medexp_rss, _ = timed(medexp_command(npz, model, epochs, run_dir, device, precision, logger,
                                                      augmentation, kernels), medexp_env)
    timing = json.loads((run_dir / "timing.json").read_text())
    first_step = timing["first_step_at"] - launched
    counted = {}
    if kernels:
        counted = {"plain_kernels_per_step": plain.get("kernels_per_step"), "kernel_unit": plain.get("unit"),
                   "medexp_kernels_per_step": json.loads((run_dir / "kernels.json").read_text())["kernels_per_step"]}
    return {
        "model": model, "epochs": epochs, "device": device, "precision": precision, "augmentation": augmentation,
        "plain_s": round(plain_wall, 1), "medexp_s": round(medexp_wall, 1),
        "wall_ratio": round(medexp_wall / plain_wall, 3), "peak_mem_ratio": round(medexp_rss / plain_rss, 3),
        "plain_img_per_s": plain["img_per_s"], "medexp_img_per_s": round(timing["train_images_per_second"], 1),
        "throughput_ratio": round(timing["train_images_per_second"] / plain["img_per_s"], 3),
        "medexp_first_step_s": round(first_step, 2), "medexp_share_before_first_step": round(first_step / medexp_wall, 3),
        "plain_test_acc": plain["test_acc"], "medexp_test_acc": round(test_accuracy(uri, run_dir), 4), **counted,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--npz", type=Path, required=True, help="a MedMNIST pneumoniamnist.npz")
    ap.add_argument("--models", nargs="+", default=["cnn:30", "resnet18_small:5"], help="model:epochs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resident", action="store_true", help="plain loop keeps data on the device (GPU baseline)")
    ap.add_argument("--precision", nargs="+", default=["32"])
    ap.add_argument("--logger", default="mlflow", help="medexp's logger group: mlflow (default), csv, none")
    ap.add_argument("--augmentation", nargs="+", default=["none"], help="none and/or light, on both sides")
    ap.add_argument("--kernels", action="store_true", help="also count the kernels of one training step")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medexp-bench-") as tmp:
        for spec in a.models:
            model, epochs = spec.split(":")
            for precision in a.precision:
                for augmentation in a.augmentation:
                    print(json.dumps(bench(a.npz.resolve(), model, int(epochs), a.device, a.resident, precision,
                                           Path(tmp), a.logger, augmentation, a.kernels)), flush=True)


if __name__ == "__main__":
    main()
