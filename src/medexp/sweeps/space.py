"""The Optuna search space, from config or from Hydra's sweep syntax on the command line.

In config (``hydra.sweeper.params``), each key is a config key to override and its value one of::

    optimizer.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
    model.width: {type: int, low: 16, high: 128, step: 16}
    model: {type: categorical, choices: [cnn, resnet18]}
    optimizer: [adam, sgd]                     # a list is a categorical
    model.layers: {type: categorical, choices: [[1, 1, 1, 1], [2, 2, 2, 2]]}  # lists as choices: sizes, layouts
    data.batch_size: "choice(32, 64, 128)"    # Hydra's sweep syntax, as on the command line

On the command line, Hydra's sweep syntax: ``model=cnn,resnet18`` or ``choice(...)`` (categorical),
``range(16,129,16)`` (int), ``interval(0,0.5)`` (float), ``tag(log,interval(1e-5,1e-2))`` (log-uniform),
``tag(int,interval(1,8))`` (int).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from medexp.errors import ConfigError


def distribution_from_spec(key: str, spec: Any) -> BaseDistribution:
    """One config entry of ``hydra.sweeper.params`` as an Optuna distribution."""
    if isinstance(spec, str):
        return distribution_from_override(_parse_override(f"{key}={spec}"))
    if isinstance(spec, Sequence):
        return CategoricalDistribution([choice_value(c) for c in spec])
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f"hydra.sweeper.params.{key}: expected a list, a sweep string or a mapping with 'type' "
                          f"(float | int | categorical), got {spec!r}")
    kind = spec["type"]
    try:
        if kind == "categorical":
            return CategoricalDistribution([choice_value(c) for c in spec["choices"]])
        if kind == "float":
            return FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)),
                                     step=None if spec.get("step") is None else float(spec["step"]))
        if kind == "int":
            return IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)),
                                   step=int(spec.get("step", 1)))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.params.{key}: {e!s} in {dict(spec)!r}") from None
    raise ConfigError(f"hydra.sweeper.params.{key}: unknown type {kind!r}; use float, int or categorical")


def distribution_from_override(override: Override) -> BaseDistribution:
    """A Hydra sweep override (``a,b``, ``choice``, ``range``, ``interval``, ``tag(log|int, ...)``) as a distribution."""
    value = override.value()
    key = override.get_key_element()
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator()))
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)) and value.step > 0:
            return IntDistribution(value.start, value.stop - 1 - (value.stop - 1 - value.start) % value.step,
                                   step=value.step)
        return CategoricalDistribution(list(override.sweep_iterator()))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log = "log" in value.tags
        if "int" in value.tags:
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(f"{key}: not a sweep ({override.input_line}); use a,b / choice / range / interval")


def split_overrides(arguments: Sequence[str]) -> tuple[list[str], dict[str, BaseDistribution]]:
    """Command-line overrides, split into fixed overrides (passed to every trial) and swept keys (searched)."""
    fixed: list[str] = []
    swept: dict[str, BaseDistribution] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        if override.is_sweep_override():
            swept[override.get_key_element().lstrip("+~")] = distribution_from_override(override)
        else:
            fixed.append(override.input_line)
    return fixed, swept


def search_space(params: Mapping[str, Any], arguments: Sequence[str]) -> tuple[list[str], dict[str, BaseDistribution]]:
    """Fixed overrides and the search space of a sweep: config ``params``, then command-line sweeps on top.

    A key fixed on the command line (``optimizer.lr=1e-3``) leaves the search space: the command line wins.
    """
    fixed, cli_space = split_overrides(arguments)
    fixed_keys = {_parse_override(line).get_key_element().lstrip("+~") for line in fixed}
    space = {key: distribution_from_spec(key, spec) for key, spec in params.items() if key not in fixed_keys}
    space.update(cli_space)
    if not space:
        raise ConfigError("the Optuna sweep has no search space: set hydra.sweeper.params in hparams_search/ or "
                          "sweep a key on the command line, e.g. 'optimizer.lr=tag(log,interval(1e-5,1e-2))'")
    return fixed, space


def grid_values(space: Mapping[str, BaseDistribution]) -> dict[str, list]:
    """The points of each distribution, for Optuna's GridSampler (floats need a ``step``)."""
    grid: dict[str, list] = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            n = int(round((dist.high - dist.low) / dist.step))
            grid[key] = [dist.low + i * dist.step for i in range(n + 1)]
        else:
            raise ConfigError(f"sampler=grid needs finite values for {key}: give choices, or a step ({dist})")
    return grid


def choice_value(value: Any) -> Any:
    """A categorical choice as Optuna's storage keeps it: a list (an image size, a block layout) becomes its Hydra
    list text ``[80,128]``, which ``override_value`` passes on as a list."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ",".join(str(choice_value(v)) for v in value) + "]"
    return value


def override_value(value: Any) -> str:
    """A sampled value written as a Hydra override value (strings quoted where the grammar needs it; a list's text,
    ``[80,128]`` from ``choice_value``, stays a list)."""
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if text.replace("_", "").replace("-", "").replace(".", "").replace("/", "").isalnum():
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _parse_override(line: str) -> Override:
    return OverridesParser.create().parse_override(line)
