"""Secrets masked before anything is logged: storage passwords out of logs and tags."""
from __future__ import annotations

from omegaconf import OmegaConf

from medexp.redact import redact_file, redact_text


def test_storage_passwords_stay_out_of_logs_and_tags():
    assert redact_text("postgresql://me:secret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"
    assert redact_text("sqlite:////tmp/optuna.db") == "sqlite:////tmp/optuna.db"


def test_secret_values_in_hydras_override_dirname_are_masked(make_cfg, tmp_path):
    cfg = make_cfg("optimizer.lr=0.01", "+tracking.api_token=S3cretT0ken", "+tracking.password='pw,with,commas'")
    assert "S3cretT0ken" in cfg.hydra.job.override_dirname
    hydra_yaml = tmp_path / "hydra.yaml"
    hydra_yaml.write_text(OmegaConf.to_yaml(OmegaConf.create({"hydra": OmegaConf.to_container(cfg.hydra)})))

    redact_file(hydra_yaml)
    text = hydra_yaml.read_text()
    assert "S3cretT0ken" not in text and "pw" not in text.replace("pwd", "")
    assert "override_dirname: +tracking.api_token=***,+tracking.password=***,optimizer.lr=0.01" in text
    assert "- +tracking.api_token=***" in text


def test_plain_overrides_and_yaml_values_are_left_alone():
    assert redact_text("override_dirname: data.npz_key=train,seed=1") == "override_dirname: data.npz_key=train,seed=1"
    assert redact_text("token: abc=def") == "token: ***"
