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
    main([])  # the experiment defaults to medexp, the config's default name
    main([])
    out = capsys.readouterr().out
    assert out.startswith("medexp: 2 runs by val/auroc")
    header, best = out.splitlines()[2].split(), out.splitlines()[4].split()
    assert header[:4] == ["run", "state", "model", "optimizer.lr"] and best[:4] == ["resnet18-run", "RUNNING",
                                                                                    "resnet18", "0.01"]
    assert len(list((tmp_path / "out" / "compare").iterdir())) in (1, 2)  # two calls in one second share a stamp
    assert all((folder / "report.html").is_file() for folder in (tmp_path / "out" / "compare").iterdir())
