"""The tracking server failing a run: a server that accepts connections but never answers fails the pre-run check in
seconds, one that dies mid-run costs seconds (not minutes) and the run ends with one line naming where its results
are; MLflow's own "View run" line, which prints the tracking URI's password, is not printed."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.test_run_status import the_run, wait_for
from tests.e2e.test_tracking_server import free_loopback_port, server_command, wait_until_serving

BIN = Path(sys.executable).parent
SMALL = ["data.num_train=128", "data.num_val=32", "data.num_test=32", "callbacks.progress_bar.refresh_rate=0"]
PASSWORD = "S3cretPW1"


def black_hole(port: int = 0) -> socket.socket:
    """A listening socket on loopback that never answers (the kernel accepts connections for it); on ``port`` as
    soon as the killed server's workers have let it go."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    wait_for(lambda: bound(sock, port), 30, f"port {port} to be free")
    sock.listen(64)
    return sock


def bound(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_a_server_that_never_answers_stops_the_run_before_training(tmp_path):
    with black_hole() as sock:
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        started = time.monotonic()
        result = subprocess.run([str(BIN / "medexp-train"), "trainer.max_epochs=1", *SMALL,
                                 f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                                env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=300)
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert "sent no HTTP answer within 5 s" in line and "tracking.on_unreachable=local" in line
    assert time.monotonic() - started < 120
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_server_that_dies_mid_run_costs_seconds_and_the_results_stay_in_the_run_folder(tmp_path):
    port = free_loopback_port()
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(server_command(port, tmp_path / "server"), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{port}"
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server, tmp_path / "server.log", timeout=120)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        served = subprocess.run([str(BIN / "medexp-train"), "trainer.max_epochs=1", *SMALL,
                                 f"hydra.run.dir={tmp_path / 'served'}"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert served.returncode == 0, served.stderr[-3000:]
        assert PASSWORD not in served.stdout + served.stderr and "🏃" not in served.stdout + served.stderr
        client = MlflowClient(f"http://127.0.0.1:{port}")
        served_id = the_run(client).info.run_id

        run_dir = tmp_path / "run"
        trainer = subprocess.Popen([str(BIN / "medexp-train"), "trainer.max_epochs=4", *SMALL,
                                    f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        wait_for(lambda: (r := the_run(client)) and r.info.run_id != served_id and "train/loss" in r.data.metrics,
                 300, "the run's first epoch")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    with black_hole(port):  # where the server was, something that takes connections and never answers
        killed_at = time.monotonic()
        try:
            out, err = trainer.communicate(timeout=400)
        finally:
            trainer.kill()
        after_kill = time.monotonic() - killed_at
    assert trainer.returncode == 2, err[-3000:]
    (line,) = error_lines(err)
    assert f"the run's results are safe in {run_dir} (metrics.json, checkpoints/)" in line
    assert err.count("training goes on without MLflow") <= 1  # said at once if the failure came before the end
    assert after_kill < 240, after_kill  # MLflow's own retries waited 496 s here
    assert "medexp: run finished" in out and PASSWORD not in out + err
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert 0 <= metrics["test/auroc"] <= 1
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

