"""A training whose whole process group dies (a closed terminal or SSH session, ``docker kill``, Slurm) leaves no
run RUNNING for ever: SIGHUP is handled as SIGTERM (last.ckpt saved, run KILLED, exit 129), and after SIGKILL of
the group, which takes the MLflow writer too, ``medexp-compare`` closes the run FAILED by its dead pid."""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.e2e.test_run_status import heed_ctrl_c, the_run, wait_for

BIN = Path(sys.executable).parent
LONG = ["trainer.max_epochs=1000", "data.num_train=256", "data.num_val=64", "data.num_test=64",
        "callbacks.progress_bar.refresh_rate=1"]


def start_training(tmp_path: Path, tracking_uri: str, **popen) -> subprocess.Popen:
    """A long training in a process group (and session) of its own, as a terminal or a job runs it."""
    if "stdout" not in popen:
        popen.update(stdout=open(tmp_path / "trainer.log", "w"), stderr=subprocess.STDOUT)
    return subprocess.Popen([str(BIN / "medexp-train"), *LONG, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}, start_new_session=True, **popen)


def first_epoch(client: MlflowClient, trainer: subprocess.Popen):
    try:
        return wait_for(lambda: (r := the_run(client)) and "train/loss" in r.data.metrics and r, 180, "an epoch")
    except AssertionError:
        trainer.kill()
        raise


@pytest.mark.slow
def test_a_killed_process_group_leaves_its_run_to_the_next_command(tmp_path, tracking_uri):
    client = MlflowClient(tracking_uri)
    trainer = start_training(tmp_path, tracking_uri)
    run = first_epoch(client, trainer)
    os.killpg(trainer.pid, signal.SIGKILL)  # trainer and writer at once: nobody closes the run now
    trainer.wait(timeout=30)
    time.sleep(2)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"

    result = subprocess.run([str(BIN / "medexp-compare"), "medexp", "--tracking-uri", tracking_uri,
                             "--out", str(tmp_path / "compare")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "closed 1 orphaned run(s) FAILED" in result.stdout
    closed = client.get_run(run.info.run_id)
    assert closed.info.status == "FAILED"
    assert f"process {trainer.pid} on " in closed.data.tags["medexp.ended_by"]


def hang_up_terminal(tmp_path: Path, tracking_uri: str, client: MlflowClient) -> tuple[subprocess.Popen, object]:
    """Train in a session whose controlling terminal is a pseudo-terminal, then close the terminal (what closing
    a terminal window or losing an SSH connection does): the kernel sends SIGHUP and later writes fail."""
    controller, terminal = pty.openpty()

    def take_terminal():
        import fcntl
        import termios

        heed_ctrl_c()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    trainer = start_training(tmp_path, tracking_uri, stdin=terminal, stdout=terminal, stderr=terminal,
                             preexec_fn=take_terminal)
    os.close(terminal)
    reading = threading.Event()
    reading.set()

    def show() -> None:  # a terminal shows what it is sent; unread, the trainer would block on a full buffer
        while reading.is_set():
            if select.select([controller], [], [], 0.2)[0]:
                try:
                    os.read(controller, 65536)
                except OSError:
                    return

    shown = threading.Thread(target=show, daemon=True)
    shown.start()
    run = first_epoch(client, trainer)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").unlink()
    reading.clear()  # a descriptor closed while another thread reads it stays open until that read returns
    shown.join()
    os.close(controller)
    return trainer, run


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill -HUP -- -PGID", "closed terminal"])
def test_a_hangup_saves_last_ckpt_and_ends_the_run_killed(tmp_path, tracking_uri, how):
    client = MlflowClient(tracking_uri)
    if how == "closed terminal":
        trainer, run = hang_up_terminal(tmp_path, tracking_uri, client)
    else:
        trainer = start_training(tmp_path, tracking_uri)
        run = first_epoch(client, trainer)
        (tmp_path / "run" / "checkpoints" / "last.ckpt").unlink()
        os.killpg(trainer.pid, signal.SIGHUP)  # the trainer and its MLflow writer alike
    try:
        code = trainer.wait(timeout=120)
    finally:
        trainer.kill()
    assert code == 128 + signal.SIGHUP
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] > 0
    closed = wait_for(lambda: (r := client.get_run(run.info.run_id)).info.status != "RUNNING" and r, 60, "the end")
    assert closed.info.status == "KILLED" and "medexp.ended_by" not in closed.data.tags
