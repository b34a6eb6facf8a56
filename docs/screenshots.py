"""Screenshots of the MLflow UI over a real medexp store, for the README: the runs list and a compare view.

    python docs/screenshots.py                      # a small grid sweep into a fresh store, then the screenshots
    python docs/screenshots.py --store outputs/mlflow.db --experiment medexp

Needs Debian's chromium (``apt-get install chromium``); runs ``mlflow ui`` on a free loopback port and headless
Chromium (with the flags this machine's closed network needs) against it. Writes docs/img/mlflow_runs.png and
docs/img/mlflow_compare.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from medexp.tracking.attach import TRAINING_VIEW
from medexp.tracking.views import RUNS_QUERY

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMG = ROOT / "docs" / "img"
SWEEP = ["-m", "model=cnn,resnet10", "optimizer.lr=1e-3,3e-3", "trainer.max_epochs=3", "data.num_train=512",
         "data.num_val=128", "data.num_test=128"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1920,1000", "--virtual-time-budget=15000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(folder: Path) -> Path:
    """A grid sweep of 4 short runs, logged the way users log them."""
    db = folder / "mlflow.db"
    subprocess.run([str(BIN / "medexp-train"), *SWEEP, f"hydra.sweep.dir={folder / 'sweep'}"], cwd=folder, check=True,
                   env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    return db


def screenshot(chromium: str, url: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=120)
    print(f"wrote {out.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="an existing medexp sqlite store (default: make one)")
    parser.add_argument("--experiment", default="medexp")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: chromium not found: apt-get install chromium")
    work = Path(tempfile.mkdtemp(prefix="medexp-shots-"))
    db = args.store.resolve() if args.store else make_store(work)
    port = free_port()
    ui = subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
                           "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{db}")
        experiment = client.get_experiment_by_name(args.experiment)
        runs = [r for r in client.search_runs([experiment.experiment_id]) if "sweep.kind" not in r.data.tags]
        IMG.mkdir(parents=True, exist_ok=True)
        # the link medexp prints: the training view with medexp's columns (medexp.tracking.views)
        screenshot(chromium, f"{base}/#/experiments/{experiment.experiment_id}/runs?{RUNS_QUERY}",
                   IMG / "mlflow_runs.png")
        query = urllib.parse.urlencode({"runs": json.dumps([r.info.run_id for r in runs[:4]]),
                                        "experiments": json.dumps([experiment.experiment_id])}) + f"&{TRAINING_VIEW}"
        screenshot(chromium, f"{base}/#/compare-runs?{query}", IMG / "mlflow_compare.png")
    finally:
        ui.terminate()
        ui.wait(timeout=30)
        if not args.store:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
