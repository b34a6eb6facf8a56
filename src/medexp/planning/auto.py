"""``medexp-train experiment=auto``: plan, then train the plan, in one command.

The train entry point hands its command line here before Hydra reads it. With ``experiment=auto`` the data
overrides (``data=...``, ``data.*``, ``paths.*``), the user's ``--config-dir`` and ``medexp-plan``'s own options
(``budget=``, ``device=``, ``allow_leaks=``, ``fingerprint_cache=``) compose ``medexp-plan``'s config, the plan is
written to ``<outputs>/plans`` (``experiment/<name>.yaml`` beside its data config and fingerprint), and the command
line Hydra then reads names the written experiment instead of ``auto``: the run is exactly what
``medexp-train --config-dir <outputs>/plans experiment=<name>`` would do, and a sweep (``-m``) runs over it. Asking
for help or the config (``--help``, ``--cfg``, ``--info``) plans nothing: ``conf/experiment/auto.yaml`` stands in.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

AUTO = "experiment=auto"
PLAN_OPTIONS = ("budget", "device", "allow_leaks", "fingerprint_cache")  # medexp-plan's keys, not medexp-train's
DATA_PREFIXES = ("data=", "data.", "+data.", "++data.", "paths.", "+paths.")
LOOK_ONLY = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve", "--shell-completion")
PLANS_FOLDER = "${paths.output_root}/plans"


def config_dir(args: Sequence[str]) -> str | None:
    """The ``--config-dir``/``-cd`` a command line gives, if any."""
    for index, arg in enumerate(args):
        for flag in ("--config-dir", "-cd"):
            if arg == flag and index + 1 < len(args):
                return args[index + 1]
            if arg.startswith(f"{flag}="):
                return arg.split("=", 1)[1]
    return None


def split_arguments(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the overrides that describe the data and the plan, the command line for training without the plan's own
    options and without ``experiment=auto``)."""
    plan, train = [], []
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        if arg == AUTO:
            continue
        if key in PLAN_OPTIONS:
            plan.append(arg)
            continue
        if arg.startswith(DATA_PREFIXES):
            plan.append(arg)
            if arg.startswith("data="):  # the plan's own data config (the same data, resolved) replaces it
                continue
        train.append(arg)  # data.* too: a value the user set wins over the plan's, as for any experiment
    return plan, train


def auto_arguments(args: Sequence[str]) -> list[str] | None:
    """The command line to train a fresh plan with; None when ``args`` do not ask for ``experiment=auto``; with
    ``--help``/``--cfg``, ``args`` less the plan's options (``conf/experiment/auto.yaml`` stands in for the plan)."""
    args = list(args)
    if AUTO not in args:
        return None
    if any(arg.split("=", 1)[0] in LOOK_ONLY for arg in args):  # nothing to plan; the plan's options are not train's
        return [arg for arg in args if arg.split("=", 1)[0].lstrip("+~") not in PLAN_OPTIONS]
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from medexp.planning.planner import plan_experiment

    plan_overrides, train = split_arguments(args)
    user_dir = config_dir(args)
    overrides = [f"output={PLANS_FOLDER}", *plan_overrides]
    if user_dir is not None:
        overrides.append(f"hydra.searchpath=[file://{Path(user_dir).resolve()}]")
    with initialize_config_module(config_module="medexp.conf", version_base="1.3"):
        cfg = compose(config_name="plan", overrides=overrides)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    result = plan_experiment(data, cfg.budget, cfg.device, cfg.output, name=cfg.name, allow_leaks=cfg.allow_leaks,
                             cache_dir=cfg.fingerprint_cache)
    plans = str(result.experiment.parent.parent)
    print(f"medexp-train experiment=auto: planned {result.experiment}", flush=True)
    where = [f"hydra.searchpath=[file://{plans}]"] if user_dir is not None else ["--config-dir", plans]
    return [*where, *train, f"experiment={result.name}"]
