"""Past one machine, on the real engines: a local one-node Slurm and a PostgreSQL server, started by the project's
own ``scripts/cluster/up.sh`` (as ``make cluster-up``; it installs them on a fresh machine, as root)."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from test_sweep_app import mlflow_store, sweep_runs  # noqa: F401  (mlflow_store is a fixture)

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

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
    code = ("import sys; from pathlib import Path; from test_sweep_app import run_toy; "
            "sys.exit(run_toy(Path(sys.argv[1]), *sys.argv[2:], check=False))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "worker.log", "w")
    return subprocess.Popen([sys.executable, "-c", code, str(out), *overrides], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


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
