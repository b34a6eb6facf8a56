"""Past one machine, on the real engines: a local one-node Slurm and a PostgreSQL server, started by the project's
own ``scripts/cluster/up.sh`` (as ``make cluster-up``; it installs them on a fresh machine, as root)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.test_sweep_app import mlflow_store, sweep_runs  # noqa: F401  (mlflow_store is a fixture)
from tests.e2e.test_tracking_server import wait_until_serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> dict[str, str]:
    """``MEDEXP_PG_URL`` and ``MEDEXP_SLURM_PARTITION`` of the local cluster, started (or found running) once."""
    if os.geteuid() != 0:
        pytest.skip("starting Slurm and PostgreSQL needs root: run make cluster-up as root, then the tests as root")
    out = tmp_path_factory.mktemp("cluster")
    done = subprocess.run([str(REPO / "scripts/cluster/up.sh")], env={**os.environ, "OUTPUTS": str(out)},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"scripts/cluster/up.sh failed:\n{done.stdout}\n{done.stderr}"
    return dict(line.split("=", 1) for line in (out / "cluster.env").read_text().splitlines())


def toy_worker(out: Path, *overrides: str) -> subprocess.Popen:
    """The toy sweep app of test_sweep_app.py in a process of its own, as an independently started worker."""
    code = ("import sys; from pathlib import Path; from tests.e2e.test_sweep_app import run_toy; "
            "sys.exit(run_toy(Path(sys.argv[1]), *sys.argv[2:], check=False))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "worker.log", "w")
    return subprocess.Popen([sys.executable, "-c", code, str(out), *overrides], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


@contextlib.contextmanager
def stopped_at_exit(process: subprocess.Popen, sweep_dir: Path):
    """The sweep process, ended with its Slurm jobs when the block ends: a failed assertion leaves nothing running."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)
            jobs = [p.name for p in (sweep_dir / ".submitit").glob("*") if p.is_dir()]
            if jobs:
                subprocess.run(["scancel", *jobs], check=False)


def test_two_workers_share_one_postgresql_study_and_run_exactly_n_trials(tmp_path, cluster, mlflow_store):  # noqa: F811
    import optuna
    from optuna.trial import TrialState

    study_name = f"two-workers-{uuid.uuid4().hex[:8]}"
    args = ["hparams_search=optuna", f"hydra.sweeper.storage={cluster['MEDEXP_PG_URL']}",
            f"hydra.sweeper.study_name={study_name}", "hydra.sweeper.n_trials=6", "hydra.sweeper.sampler=random",
            "toy.epochs=2"]
    workers = [toy_worker(tmp_path / f"w{i}", *args) for i in (1, 2)]
    for i, worker in enumerate(workers, 1):
        assert worker.wait(timeout=600) == 0, (tmp_path / f"w{i}/worker.log").read_text()[-3000:]

    study = optuna.load_study(study_name=study_name, storage=cluster["MEDEXP_PG_URL"])
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    ran = {}  # trial number -> [worker, ...]: each trial's job ran once, in one worker
    for i in (1, 2):
        for path in (tmp_path / f"w{i}/outputs/multirun").glob("*/invocations.txt"):
            ran.setdefault(int(path.parent.name), []).extend([i] * len(path.read_text().splitlines()))
    assert sorted(ran) == list(range(6)) and all(len(w) == 1 for w in ran.values()), ran
    assert {w[0] for w in ran.values()} == {1, 2}, f"one worker ran every trial: {ran}"
    parents, children = sweep_runs(mlflow_store)
    assert len(parents) == 1, [p.info.run_name for p in parents]
    assert sorted(int(c.data.tags["sweep.trial"]) for c in children) == list(range(6))
    assert all(c.data.tags["sweep.state"] == "COMPLETE" for c in children)


def test_slurm_launcher_runs_a_grid_sweep_as_one_parent_with_a_child_per_job(tmp_path, cluster, mlflow_store):  # noqa: F811
    worker = toy_worker(tmp_path, "hydra/launcher=slurm", "model=cnn,resnet18")
    assert worker.wait(timeout=600) == 0, (tmp_path / "worker.log").read_text()[-3000:]

    parents, children = sweep_runs(mlflow_store)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["model=cnn", "model=resnet18"]
    assert all(c.info.status == "FINISHED" and c.data.tags["sweep.state"] == "COMPLETE" for c in children)
    jobs = [p.name for p in (tmp_path / "outputs/multirun/.submitit").iterdir()]
    assert jobs, "no Slurm job folder: the sweep did not go through submitit"
    assert parents[0].data.tags["sweep.launcher"] == "SlurmLauncher"


def test_a_requeued_slurm_job_resumes_from_last_ckpt_into_the_same_mlflow_run(tmp_path, cluster, mlflow_store):  # noqa: F811
    """``scontrol requeue`` stops the job as a preemption does (SIGTERM: last.ckpt saved at the next batch); Slurm
    starts it again about 2 minutes later and it finishes its epochs in the same run folder and MLflow run."""
    epochs, sweep_dir = 3, tmp_path / "sweep"
    command = [str(REPO / ".venv/bin/medexp-train"), "-m", "hydra/launcher=slurm", "model=cnn",
               f"trainer.max_epochs={epochs}", "data.num_train=1024", "data.num_val=32", "data.num_test=32",
               "callbacks.progress_bar.refresh_rate=0", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, **cluster, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "sweep.log", "w") as log, stopped_at_exit(
            subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path), sweep_dir) as sweep:
        last = sweep_dir / "0/checkpoints/last.ckpt"
        deadline = time.time() + 300
        while not last.is_file() and sweep.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert last.is_file(), "the job saved no last.ckpt after its first epoch"
        (job,) = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir()]  # <sweep>/.submitit/<job id>
        subprocess.run(["scontrol", "requeue", job], check=True)
        assert sweep.wait(timeout=600) == 0, (tmp_path / "sweep.log").read_text()[-3000:]

    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    assert "Restarts=1" in shown, shown
    parents, (child,) = sweep_runs(mlflow_store, "medexp")
    assert child.info.status == "FINISHED" and child.data.tags["sweep.state"] == "COMPLETE"
    steps = {m.step for m in mlflow_store.get_metric_history(child.info.run_id, "val/auroc")}
    assert len(steps) == epochs  # an epoch cut short is redone, none is skipped or added
    assert mlflow_store.get_metric_history(child.info.run_id, "epoch")[-1].value == epochs
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit" / job).glob("*log.*"))
    # medexp's own notice: Lightning's only line about it is a warning that a checkpoint ended mid-epoch
    assert "medexp: resuming from " in logs and "last.ckpt (saved in epoch " in logs, logs[-3000:]


def test_make_server_keeps_runs_in_postgresql_and_serves_artifacts(tmp_path, cluster):
    import sqlalchemy
    from mlflow.tracking import MlflowClient

    from tests.e2e.test_tracking_server import free_loopback_port

    port, name = free_loopback_port(), f"server-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "MEDEXP_OUTPUT_ROOT": str(tmp_path)}
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(["make", "-s", "server", f"DB={cluster['MEDEXP_MLFLOW_DB']}", f"MLFLOW_PORT={port}"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_until_serving(uri, server, tmp_path / "server.log", timeout=120)
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment(name))
        client.log_text(run.info.run_id, "hello", "notes/a.txt")
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # clients need no shared filesystem
        assert any((tmp_path / "mlartifacts").rglob("a.txt")), "the artifact did not land in the server's folder"
        assert Path(client.download_artifacts(run.info.run_id, "notes/a.txt", str(tmp_path))).read_text() == "hello"
        engine = sqlalchemy.create_engine(cluster["MEDEXP_MLFLOW_DB"])
        with engine.connect() as connection:
            stored = connection.execute(sqlalchemy.text("select count(*) from experiments where name = :n"),
                                        {"n": name}).scalar()
        engine.dispose()
        assert stored == 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and the server it started
        server.wait(timeout=30)
