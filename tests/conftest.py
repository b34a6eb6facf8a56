"""Shared fixtures: composed configs with every output in a temp folder, a pre-migrated MLflow store, real data."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from medexp.hydra_setup import prepare_hydra

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PNEUMONIA = SHARED_DATA / "pneumoniamnist.npz"


def compose_config(overrides: list[str], out: Path):
    """The train config as ``medexp-train`` would see it, with run dir, outputs and data under ``out``."""
    prepare_hydra()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="medexp.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    run_dir = out / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.paths.output_root = str(out)
        cfg.paths.output_dir = str(run_dir)
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(out)
        cfg.hydra.job.num = 0
        cfg.hydra.job.id = "0"
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, migrated once (3-7 s) and copied by each test that logs."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def tracking_uri(tmp_path, migrated_store, monkeypatch) -> str:
    db = tmp_path / "mlflow.db"
    shutil.copy(migrated_store, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str, out: Path | None = None):
        return compose_config(list(overrides), out or tmp_path)

    yield make
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


@pytest.fixture
def pneumonia_npz() -> Path:
    if not PNEUMONIA.is_file():
        pytest.skip(f"real data not found at {PNEUMONIA}")
    return PNEUMONIA
