"""A run's beginning: config values checked before anything opens (a signal turned into a saved checkpoint and a
non-zero exit at its end is ``medexp.callbacks.signals``)."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

from medexp.errors import ConfigError
from medexp.hydra_setup import chosen_option


# -- config values ------------------------------------------------------------------------------------------------
def _get(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    """A finite number: ``inf`` passes every range test and fails only after an epoch of training."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _duration(value: Any) -> bool:
    from medexp.callbacks.budget import parse_duration

    try:
        parse_duration(value)
    except ConfigError:
        return False
    return True


# (key, test, what it must be); a key the config does not have is not checked
VALUE_RULES = (
    ("trainer.max_epochs", lambda v: _integer(v) and (v >= 1 or v == -1), "a whole number >= 1 (or -1: no limit)"),
    ("trainer.min_epochs", lambda v: _integer(v) and v >= 0, "a whole number >= 0"),
    ("trainer.accumulate_grad_batches", lambda v: _integer(v) and v >= 1, "a whole number >= 1"),
    ("trainer.gradient_clip_val", lambda v: _number(v) and v >= 0, "a number >= 0 (or null: no clipping)"),
    ("trainer.compile", lambda v: isinstance(v, bool), "true or false"),
    ("trainer.float32_matmul_precision", lambda v: v in ("highest", "high", "medium"), "highest, high or medium"),
    ("trainer.sync_batchnorm", lambda v: v in (True, False, "auto"), "true, false or auto"),
    ("data.batch_size", lambda v: _integer(v) and v >= 1, "a whole number >= 1"),
    ("data.num_workers", lambda v: v == "auto" or (_integer(v) and v >= 0), "a whole number >= 0, or auto"),
    ("optimizer.lr", lambda v: _number(v) and v > 0, "a number > 0, e.g. 1e-3"),
    ("optimizer.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("seed", _integer, "a whole number"),
    ("tags", lambda v: isinstance(v, list) and all(isinstance(t, str) and re.fullmatch(r"[\w.\- /]+", t) for t in v),
     "a list of names (letters, digits, _ - . / and spaces), e.g. [baseline,pneumonia]"),
    ("trainer.budget", _duration, "a duration such as 20m, 1.5h, 1h30m or 900 (seconds)"),
)


def check_config_values(cfg: Mapping) -> None:
    """Types and ranges of the values every run uses, checked before the run opens anything (MLflow included), so
    a typo is one line and leaves no empty FAILED run behind."""
    for key, valid, meaning in VALUE_RULES:
        value = _get(cfg, key)
        if value is not None and not valid(value):
            raise ConfigError(f"{key}={value!r} is not valid: it must be {meaning}")


def check_run_mode(cfg: Mapping) -> None:
    """``hparams_search=optuna`` without ``-m`` would quietly train once with the defaults: say so instead. (A DDP
    rank of a trial also runs in single-run mode, but carries its trial number.)"""
    from medexp.hydra_setup import in_multirun
    from medexp.sweeps import optuna_sweeper_config

    if optuna_sweeper_config() is not None and not in_multirun() and cfg.get("optuna_trial") is None:
        raise ConfigError("hparams_search=optuna searches over many runs: add -m (medexp-train -m "
                          "hparams_search=optuna ...)")


TASK_CHOICES = {  # what to add to the command line for a data set of each kind
    "detection": "task=detection model=retinanet",
    "segmentation": "task=segmentation model=unet (or another segmentation model)",
    "classification": "task=classification model=cnn (or resnet18, ...)",
}


def check_task_fits_data(cfg) -> None:
    """A data set of one kind (classification, segmentation, detection) with a task of another fails deep inside
    the model or the loss; name the task (and a model) to pick instead. Both declare their kind (``task_kind``)."""
    from hydra.utils import get_class

    try:
        data, task = get_class(str(cfg.data._target_)), get_class(str(cfg.task._target_))
    except Exception:  # a target of the user's own: nothing to compare it with
        return
    kind = getattr(data, "task_kind", "")
    if kind in TASK_CHOICES and getattr(task, "task_kind", "") != kind:
        raise ConfigError(f"data={chosen_option('data', cfg.data.get('name'))} is a {kind} data set but the task is "
                          f"{task.__name__}: add {TASK_CHOICES[kind]}")
