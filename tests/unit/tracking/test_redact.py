"""Secrets masked before anything is logged: storage passwords out of logs and tags."""
from __future__ import annotations

from medexp.tracking.redact import redact_text


def test_storage_passwords_stay_out_of_logs_and_tags():
    assert redact_text("postgresql://me:secret@db:5432/optuna") == "postgresql://me:***@db:5432/optuna"
    assert redact_text("sqlite:////tmp/optuna.db") == "sqlite:////tmp/optuna.db"
