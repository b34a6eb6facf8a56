"""The tracking seam before and around a run: whether a store can be used, how ``closing`` ends the run for each
way a run ends, and where the printed links point.

Run names say what was trained on: the data's own name where it has one (BCCD through the VOC reader)."""
from __future__ import annotations

import os
import socket

import pytest
from omegaconf import OmegaConf

from medexp.errors import ConfigError
from medexp.tracking.attach import Tracking, default_run_name, prepare, run_tags, ui_base, unreachable


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EndedRun:
    """The part of MlflowRunLogger that ``closing`` uses, recording what it was told."""

    def __init__(self):
        self.tags: dict[str, str] = {}
        self.status: str | None = None

    def log_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def end(self, status: str) -> None:
        self.status = status


class TrialPruned(Exception):  # Optuna's name, which closing recognises by name
    pass


def test_a_server_that_never_answers_and_a_closed_port_are_unreachable_and_say_why():
    with socket.socket() as server:  # the kernel accepts connections for it; nothing ever answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        problem = unreachable(f"http://alice:pw@127.0.0.1:{port}", timeout=1)
        assert problem == f"127.0.0.1:{port} sent no HTTP answer within 1 s"
    port = closed_port()
    problem = unreachable(f"http://127.0.0.1:{port}", timeout=2)
    assert problem is not None and problem.startswith(f"127.0.0.1:{port}: ")


def test_a_sqlite_store_needs_a_folder_it_can_create_and_write(tmp_path):
    assert unreachable(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}") is None
    assert (tmp_path / "new").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert unreachable(f"sqlite:///{blocker / 'mlflow.db'}").startswith(f"cannot create {blocker}")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert unreachable(f"sqlite:///{locked / 'mlflow.db'}") == f"{locked} is not writable"


def mlflow_cfg(uri: str, **tracking):
    return OmegaConf.create({"logger": {"mlflow": {"_target_": "medexp.tracking.mlflow.MlflowRunLogger"}},
                             "tracking": {"uri": uri, **tracking}, "paths": {"output_root": "/unused"}})


def test_an_unreachable_store_stops_the_run_in_one_line_naming_the_ways_out(monkeypatch):
    for variable in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(variable, raising=False)
    uri = f"http://user:s3cret@127.0.0.1:{closed_port()}"
    with pytest.raises(ConfigError) as error:
        prepare(mlflow_cfg(uri, on_unreachable="fail"))
    message = str(error.value)
    assert "cannot be reached" in message and "tracking.on_unreachable=local" in message and "\n" not in message
    assert "s3cret" not in message
    with pytest.raises(ConfigError, match="tracking.on_unreachable='retry' is unknown"):
        prepare(mlflow_cfg(uri, on_unreachable="retry"))


def test_registering_a_model_needs_an_mlflow_run():
    cfg = OmegaConf.create({"logger": {"csv": {"_target_": "x"}}, "tracking": {"register_as": "net"}})
    with pytest.raises(ConfigError, match="tracking.register_as=net .* logs no MLflow run"):
        prepare(cfg)


@pytest.mark.parametrize("raised, status, tags", [
    (None, "FINISHED", {}),
    (RuntimeError("boom"), "FAILED", {}),
    (KeyboardInterrupt(), "KILLED", {}),
    (SystemExit(1), "KILLED", {}),  # Lightning's answer to Ctrl-C
    (TrialPruned(), "FINISHED", {"trial_state": "PRUNED"}),
])
def test_closing_ends_the_run_with_the_status_of_its_outcome_and_reraises(raised, status, tags):
    run = EndedRun()
    tracking = Tracking(mlflow=run)
    if raised is None:
        with tracking.closing():
            pass
    else:
        with pytest.raises(type(raised)), tracking.closing():
            raise raised
    assert (run.status, run.tags) == (status, tags)


def test_closing_without_an_mlflow_run_only_passes_errors_on():
    with pytest.raises(RuntimeError), Tracking().closing():
        raise RuntimeError("boom")


def test_ui_links_point_at_the_server_or_at_make_ui(monkeypatch):
    assert ui_base("https://mlflow.example.org:8443/prefix/") == "https://mlflow.example.org:8443/prefix"
    monkeypatch.setenv("MLFLOW_HOST", "0.0.0.0")
    monkeypatch.setenv("MLFLOW_PORT", "5055")
    assert ui_base("sqlite:////tmp/mlflow.db") == "http://0.0.0.0:5055"


def test_a_local_stores_links_follow_the_port_make_ui_serves_it_on(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_HOST", raising=False)
    monkeypatch.delenv("MLFLOW_PORT", raising=False)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    assert ui_base(store) == "http://127.0.0.1:5000"  # nothing served it yet: make ui's default
    (tmp_path / "mlflow-ui.url").write_text("http://127.0.0.1:5001\n")  # make ui MLFLOW_PORT=5001
    assert ui_base(store) == "http://127.0.0.1:5001"
    monkeypatch.setenv("MLFLOW_PORT", "5002")  # the run's own setting wins
    assert ui_base(store) == "http://127.0.0.1:5002"


def test_a_bccd_run_is_named_after_bccd_not_the_voc_reader(make_cfg):
    assert default_run_name(make_cfg("experiment=bccd_cells")).startswith("retinanet-bccd-seed0-")
    assert default_run_name(make_cfg("data=pneumoniamnist")).startswith("cnn-pneumoniamnist-seed0-")
    assert default_run_name(make_cfg()).startswith("cnn-synthetic-seed0-")  # no data.name: the option chosen


def test_tags_become_run_tags(make_cfg):
    tags = run_tags(make_cfg("tags=[baseline,small data]"))
    assert tags["baseline"] == "true" and tags["small data"] == "true"
