"""medexp-compare reads a sweep back from MLflow: ranked table on stdout, HTML + PNG report on disk."""
from __future__ import annotations

import pytest

from medexp.cli.compare import main
from tests.e2e.test_sweep_app import mlflow_store, run_toy, sweep_runs  # noqa: F401  (mlflow_store is a fixture)


def test_compare_ranks_a_sweep_and_writes_a_report(tmp_path, mlflow_store, tracking_uri, capsys):  # noqa: F811
    run_toy(tmp_path, "model=cnn,resnet18", "optimizer.lr=1e-3,1e-2")
    (parent,), _ = sweep_runs(mlflow_store)
    capsys.readouterr()

    main(["toy", "--sweep", parent.info.run_id, "--out", str(tmp_path / "report")])

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"toy / {parent.info.run_name}: 4 runs by val/score"
    header, ranked = lines[2], [line for line in lines[4:] if line.startswith("model=")]
    assert header.split()[:5] == ["run", "state", "model", "optimizer.lr", "val/score"]
    assert [line.split()[0] for line in ranked] == [
        "model=resnet18,optimizer.lr=1e-3", "model=cnn,optimizer.lr=1e-3",
        "model=resnet18,optimizer.lr=0.01", "model=cnn,optimizer.lr=0.01"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert "ranking.png" in page and page.count("<tr>") == 5
    assert (tmp_path / "report" / "ranking.png").stat().st_size > 1000


def test_compare_by_sweep_name_and_metric(tmp_path, mlflow_store, tracking_uri, capsys):  # noqa: F811
    run_toy(tmp_path, "model=cnn,resnet18")
    (parent,), _ = sweep_runs(mlflow_store)
    capsys.readouterr()

    main(["toy", "--sweep", parent.info.run_name, "--metric", "test/score", "--mode", "min",
          "--out", str(tmp_path / "report")])

    out = capsys.readouterr().out
    assert "2 runs by test/score" in out and out.index("model=cnn") < out.index("model=resnet18")


def test_unknown_experiment_is_one_line(tmp_path, tracking_uri, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["nope", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: no MLflow experiment 'nope'")


def test_default_experiment_and_one_report_folder_per_call(tmp_path, tracking_uri, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("medexp")
    for model, auroc in (("cnn", 0.8), ("resnet18", 0.9)):  # plain runs, outside any sweep
        run = client.create_run(experiment, run_name=f"{model}-run", tags={"choice.model": model})
        client.log_param(run.info.run_id, "optimizer.lr", "0.001" if model == "cnn" else "0.01")
        client.log_metric(run.info.run_id, "val/auroc", auroc)
    monkeypatch.setenv("MEDEXP_OUTPUT_ROOT", str(tmp_path / "out"))
    main([])  # every experiment by default (the store's Default one is empty)
    main([])
    out = capsys.readouterr().out
    assert out.startswith("all experiments: 2 runs by val/auroc")
    header, best = out.splitlines()[2].split(), out.splitlines()[4].split()
    assert header[:4] == ["run", "state", "model", "optimizer.lr"] and best[:4] == ["resnet18-run", "RUNNING",
                                                                                    "resnet18", "0.01"]
    assert len(list((tmp_path / "out" / "compare").iterdir())) in (1, 2)  # two calls in one second share a stamp
    assert all((folder / "report.html").is_file() for folder in (tmp_path / "out" / "compare").iterdir())


def test_runs_are_ranked_by_their_best_validation_value_across_every_experiment(tmp_path, tracking_uri, capsys):
    """The last epoch's validation value and the test value rank these runs the other way round; the best
    validation value (the kept checkpoint's) decides, over every experiment unless one is named."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    # (experiment, run, best val, last val, test): "steady" is best on validation, "lucky" on test and last epoch
    for experiment, name, best, last, test in (("medexp", "steady", 0.985, 0.970, 0.90),
                                               ("other", "lucky", 0.981, 0.981, 0.95)):
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(experiment_id, run_name=name)
        client.log_param(run.info.run_id, "optimized_metric", "val/auroc")
        for key, value in (("val/auroc", best), ("val/auroc", last), ("best/val/auroc", best), ("test/auroc", test)):
            client.log_metric(run.info.run_id, key, value)
    main(["--out", str(tmp_path / "all")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "all experiments: 2 runs by best/val/auroc"
    assert lines[2].split()[:2] == ["experiment", "run"] and "test/auroc" in lines[2].split()
    ranked = [line.split()[1] for line in lines[4:6]]
    assert ranked == ["steady", "lucky"]

    main(["other", "--out", str(tmp_path / "one")])
    assert capsys.readouterr().out.startswith("other: 1 runs by best/val/auroc")
