"""The plan a run was made from: an experiment written by ``medexp-plan`` carries a ``plan`` block (name, digest,
the experiment file, the fingerprint, every planned value with its reason), which every run made from it, and the
parent run of a sweep over it, records as MLflow tags and artifacts (``plan/``)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

PLAN_TAG = "medexp.plan"
DIGEST_TAG = "medexp.plan.digest"
ARTIFACT_PATH = "plan"
FILE_KEYS = ("experiment", "fingerprint", "reasons")


def plan_tags(config: Mapping[str, Any]) -> dict[str, str]:
    """``medexp.plan`` = the plan's name and ``medexp.plan.digest`` = its digest; none for a run not planned."""
    plan = config.get("plan") or {}
    if not plan.get("name"):
        return {}
    return {PLAN_TAG: str(plan["name"]), DIGEST_TAG: str(plan.get("digest") or "")}


def plan_files(config: Mapping[str, Any]) -> list[Path]:
    """The plan's files that exist: the experiment as written, its fingerprint, its values with their reasons."""
    plan = config.get("plan") or {}
    return [Path(str(plan[key])) for key in FILE_KEYS if plan.get(key) and Path(str(plan[key])).is_file()]
