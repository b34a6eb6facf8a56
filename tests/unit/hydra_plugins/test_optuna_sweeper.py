"""The Optuna sweeper end to end on the toy app: pruning, resume, parallel trials, grid exhaustion."""
from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from medexp.sweeps.seeds import trial_seed
from medexp.tracking.sweep_parent import close_unfinished_sweeps
from tests.e2e.test_sweep_app import mlflow_store, run_toy, sweep_runs  # noqa: F401  (mlflow_store is a fixture)


def optuna_args(tmp_path: Path, study: str, n_trials: int, *extra: str) -> list[str]:
    return ["hparams_search=optuna", f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweeper.study_name={study}",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}", *extra]


def load(tmp_path: Path, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def invocations(tmp_path: Path) -> dict[int, int]:
    """Job folder (= trial number) -> how many times its task ran."""
    jobs = (tmp_path / "outputs" / "multirun").glob("*/invocations.txt")
    return {int(p.parent.name): len(p.read_text().splitlines()) for p in jobs}


def test_pruned_trials_stop_early_and_are_logged_pruned(tmp_path, mlflow_store):  # noqa: F811
    run_toy(tmp_path, *optuna_args(tmp_path, "prune", 6, "toy.epochs=3", "hydra.sweeper.sampler=random",
                                   "++hydra.sweeper.pruner_kwargs={n_startup_trials:1,n_warmup_steps:0}"))

    study = load(tmp_path, "prune")
    pruned = [t.number for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and len(pruned) < 6 and all(t.state != TrialState.FAIL for t in study.trials)
    parents, children = sweep_runs(mlflow_store)
    assert len(parents) == 1 and len(children) == 6
    by_trial = {int(c.data.tags["sweep.trial"]): c for c in children}
    for number in pruned:
        run = by_trial[number]
        assert run.data.tags["sweep.state"] == "PRUNED" and run.data.tags["trial_state"] == "PRUNED"
        assert len(mlflow_store.get_metric_history(run.info.run_id, "val/score")) < 3  # stopped before the end
    for number, run in by_trial.items():
        assert run.info.run_name.startswith(f"trial-{number} lr=")
        assert run.data.params["seed"] == str(trial_seed(0, number))
        assert run.data.params["optuna_trial"] == str(number)
    assert parents[0].data.tags["best.trial"] == str(study.best_trial.number)


def test_resume_runs_only_missing_trials_and_fails_stale_ones(tmp_path, mlflow_store):  # noqa: F811
    run_toy(tmp_path, *optuna_args(tmp_path, "resume", 3, "hydra.sweeper.sampler=random"))
    first = load(tmp_path, "resume")
    first_params = [t.params for t in first.trials]
    # a sweep killed mid-trial leaves the Optuna trial and its MLflow run RUNNING
    stale = first.ask()
    (parent,), _ = sweep_runs(mlflow_store)
    mlflow_store.create_run(parent.info.experiment_id, run_name="killed",
                            tags={"mlflow.parentRunId": parent.info.run_id, "sweep.trial": str(stale.number)})

    run_toy(tmp_path, *optuna_args(tmp_path, "resume", 5, "hydra.sweeper.sampler=random"))
    run_toy(tmp_path, *optuna_args(tmp_path, "resume", 5, "hydra.sweeper.sampler=random"))  # nothing left to do

    study = load(tmp_path, "resume")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert invocations(tmp_path) == {0: 1, 1: 1, 2: 1, 4: 1, 5: 1}  # nothing rerun, the stale trial not redone
    assert [t.params for t in study.trials[:3]] == first_params
    assert all(t.params not in first_params for t in study.trials[4:])  # a new sampler seed: no replay
    parents, children = sweep_runs(mlflow_store)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # one study, one parent
    killed = next(c for c in children if c.info.run_name == "killed")
    assert killed.info.status == "FAILED" and killed.data.tags["sweep.state"] == "FAIL"
    assert sorted(int(c.data.tags["sweep.trial"]) for c in children) == [0, 1, 2, 3, 4, 5]


def test_parallel_trials_with_joblib_do_not_collide(tmp_path, mlflow_store):  # noqa: F811
    run_toy(tmp_path, *optuna_args(tmp_path, "parallel", 4, "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib",
                                   "hydra.launcher.n_jobs=2"))

    assert [t.state for t in load(tmp_path, "parallel").trials] == [TrialState.COMPLETE] * 4
    assert invocations(tmp_path) == {0: 1, 1: 1, 2: 1, 3: 1}
    parents, children = sweep_runs(mlflow_store)
    assert len(parents) == 1 and len(children) == 4
    assert len({c.info.run_name for c in children}) == 4
    assert sorted(c.data.tags["sweep.trial"] for c in children) == ["0", "1", "2", "3"]
    assert all(c.info.status == "FINISHED" and "sweep/objective" in c.data.metrics for c in children)


def test_grid_sampler_stops_when_the_grid_is_done(tmp_path, mlflow_store):  # noqa: F811
    run_toy(tmp_path, *optuna_args(tmp_path, "grid", 10, "hydra.sweeper.sampler=grid", "hydra.sweeper.params=null",
                                   "model=cnn,resnet18", "optimizer.lr=choice(1e-3,1e-2)"))

    study = load(tmp_path, "grid")
    assert len(study.trials) == 4
    assert {(t.params["model"], t.params["optimizer.lr"]) for t in study.trials} == {
        ("cnn", 1e-3), ("cnn", 1e-2), ("resnet18", 1e-3), ("resnet18", 1e-2)}
    assert study.best_trial.params == {"model": "resnet18", "optimizer.lr": 1e-3}
    (parent,), _ = sweep_runs(mlflow_store)  # the study's parent run holds its search space as params
    assert parent.data.params == {"model": "cnn,resnet18", "optimizer.lr": "choice(1e-3,1e-2)"}


def test_all_trials_failing_fails_the_sweep(tmp_path, mlflow_store):  # noqa: F811
    code = run_toy(tmp_path, *optuna_args(tmp_path, "broken", 2, "hydra.sweeper.params=null", "model=choice(cnn)",
                                          "toy.fail_model=cnn"), check=False)

    close_unfinished_sweeps()
    assert code == 1
    assert [t.state for t in load(tmp_path, "broken").trials] == [TrialState.FAIL] * 2
    (parent,), _ = sweep_runs(mlflow_store)
    assert parent.info.status == "FAILED"


def test_a_study_cannot_flip_its_direction(tmp_path, mlflow_store):  # noqa: F811
    optuna.create_study(study_name="flip", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="minimize")
    code = run_toy(tmp_path, *optuna_args(tmp_path, "flip", 1), check=False)
    close_unfinished_sweeps()

    assert code == 2 and len(load(tmp_path, "flip").trials) == 0  # a user error: one line, exit 2


def test_without_a_study_name_each_sweep_gets_its_own_study_and_the_same_command_resumes_it(tmp_path, mlflow_store):  # noqa: F811
    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}"
    base = ["hparams_search=optuna", storage, "hydra.sweeper.sampler=random"]
    run_toy(tmp_path, *base, "hydra.sweeper.n_trials=2", "model=cnn")
    run_toy(tmp_path, *base, "hydra.sweeper.n_trials=2", "model=resnet18")  # another question: another study
    run_toy(tmp_path, *base, "hydra.sweeper.n_trials=3", "model=cnn")  # the first command again: resumes
    studies = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'optuna.db'}")}
    assert len(studies) == 2 and sorted(studies.values()) == [2, 3]
    assert all(name.startswith("toy-") for name in studies)  # <name>-<data>-<model>-<digest>
    assert sum(invocations(tmp_path).values()) == 5  # nothing ran twice, nothing was skipped


def test_a_named_study_of_another_search_is_refused(tmp_path, mlflow_store, capsys):  # noqa: F811
    run_toy(tmp_path, *optuna_args(tmp_path, "mine", 1, "hydra.sweeper.sampler=random"))
    code = run_toy(tmp_path, *optuna_args(tmp_path, "mine", 2, "hydra.sweeper.sampler=random",
                                          "hydra.sweeper.params.optimizer.lr=choice(0.1,0.01)"), check=False)
    close_unfinished_sweeps()
    assert code == 1
    assert len(load(tmp_path, "mine").trials) == 1  # nothing added to the old study
