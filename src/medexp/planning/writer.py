"""The plan on disk: a ``# @package _global_`` experiment with a comment per planned value, the user's data config
copied beside it (so ``--config-dir <output>`` alone runs it), ``fingerprint.json`` and ``plan.json``. The experiment's
``plan`` block names the plan (name, digest, files: MLflow tags and artifacts of every run made from it) and the
sweep space centred on it (``plan.search``).

Layout of ``<output>``::

    experiment/<name>.yaml   the experiment: medexp-train --config-dir <output> experiment=<name>
    data/<name>.yaml         the data config the plan was made from, resolved (absolute paths)
    <name>.fingerprint.json  what the rules read
    <name>.plan.json         every planned value with its reason
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medexp.planning.rules import Planned

# config groups the experiment chooses, each with why
GroupChoices = dict[str, tuple[str, str]]


def experiment_name(data: Mapping[str, Any]) -> str:
    """A config-safe name from the data folder (``HC18`` -> ``hc18_plan``), else the data config's name."""
    root = Path(str(data.get("root") or "")).name
    stem = root if root and root not in (".", "data") else str(data.get("name") or "dataset")
    return re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_") + "_plan"


def write_plan(output: str | Path, name: str, data: Mapping[str, Any], groups: GroupChoices,
               plan: Mapping[str, Planned], fingerprint: Mapping[str, Any], header: list[str],
               search: Mapping[str, Any] | None = None) -> Path:
    """Write the experiment, the data config, the fingerprint and the plan; return the experiment's path."""
    output = Path(output).resolve()
    (output / "experiment").mkdir(parents=True, exist_ok=True)
    (output / "data").mkdir(parents=True, exist_ok=True)
    (output / "data" / f"{name}.yaml").write_text(data_yaml(data, name))
    fingerprint_path = output / f"{name}.fingerprint.json"
    fingerprint_path.write_text(json.dumps(fingerprint, indent=1))
    plan_json = json.dumps({key: {"value": p.value, "reason": p.reason} for key, p in plan.items()}, indent=1)
    reasons = output / f"{name}.plan.json"
    reasons.write_text(plan_json)
    experiment = output / "experiment" / f"{name}.yaml"
    origin = {"name": name, "digest": hashlib.sha256(plan_json.encode()).hexdigest()[:12],
              "experiment": str(experiment), "fingerprint": str(fingerprint_path), "reasons": str(reasons),
              "search": dict(search or {})}
    experiment.write_text(experiment_yaml(name, groups, plan, header, origin))
    return experiment


def data_yaml(data: Mapping[str, Any], name: str) -> str:
    import yaml

    return (f"# The data config {name} was planned from (medexp-plan), resolved: paths are absolute.\n"
            + yaml.safe_dump(dict(data), sort_keys=False))


def experiment_yaml(name: str, groups: GroupChoices, plan: Mapping[str, Planned], header: list[str],
                    origin: Mapping[str, Any]) -> str:
    lines = ["# @package _global_", *[f"# {line}" for line in header], "defaults:"]
    lines += [f"  - override /{group}: {choice}  # {why}" for group, (choice, why) in groups.items()]
    lines += ["", f"name: {name}",
              "# where this plan came from: every run made from it carries these as MLflow tags and artifacts",
              "plan:", *(f"  {key}: {json.dumps(origin[key])}" for key in ("name", "digest", "experiment",
                                                                         "fingerprint", "reasons"))]
    if origin["search"]:
        lines.append("  # hparams_search=optuna searches this space, centred on the plan; the plan is its first trial")
        lines.append("  search:")
        lines += [f"    {key}: {json.dumps(spec)}" for key, spec in origin["search"].items()]
    lines += _tree_lines(_nest(plan), 0)
    return "\n".join(lines) + "\n"


def _nest(plan: Mapping[str, Planned]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, planned in plan.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = planned
    return tree


def _tree_lines(tree: Mapping[str, Any], depth: int) -> list[str]:
    lines = []
    indent = "  " * depth
    for key, node in tree.items():
        if isinstance(node, Planned):
            lines.append(f"{indent}{key}: {json.dumps(node.value)}  # {node.reason}")
        else:
            lines += [f"{indent}{key}:", *_tree_lines(node, depth + 1)]
    return lines
