"""What Hydra must know before it composes medexp's configs; called by the entry points (and the tests).

- ``${medexp_cwd:}``: the working directory at launch, so paths are absolute even where Hydra's own
  ``${hydra:runtime.cwd}`` is not set yet (when a sweeper builds its sweep folder).
- ``${medexp_new_dir:<path>}``: a run or sweep folder of this process's own (``new_folder``).
- medexp's Optuna sweeper: Hydra finds plugins by listing the ``hydra_plugins`` namespace, which an editable install
  hides; registering the class directly works for editable and regular installs alike.
"""
from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf


def prepare_hydra() -> None:
    if not OmegaConf.has_resolver("medexp_cwd"):
        OmegaConf.register_new_resolver("medexp_cwd", os.getcwd, use_cache=True)
    if not OmegaConf.has_resolver("medexp_new_dir"):
        # cached like Hydra's ${now:}: every copy of the config (a sweep's jobs, a worker's) names the same folder
        OmegaConf.register_new_resolver("medexp_new_dir", new_folder, use_cache=True)
    from medexp.distributed import register_resolvers

    register_resolvers()
    from medexp.sweeps import register_optuna_sweeper

    register_optuna_sweeper()
    _report_hydra_errors_in_one_line()
    sys.argv[1:] = [quote_unparsable_value(arg) for arg in sys.argv[1:]]


def quote_unparsable_value(arg: str) -> str:
    """``key=a/{stem}_mask.png`` or ``key=^(\\d+)_`` -> the value in single quotes. Hydra's override grammar reads
    ``{`` as a dictionary and rejects ``(``, ``^`` and the like, so datalist patterns and regular expressions
    would need quoting twice (for the shell and for Hydra); an override Hydra cannot parse, but can once its value
    is quoted and then reads back unchanged, is quoted. Everything else passes as given."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key, sep, value = arg.partition("=")
    if not sep or arg.startswith("-") or "'" in value:
        return arg
    parser = OverridesParser.create()
    try:
        parser.parse_override(arg)
        return arg
    except Exception:  # noqa: BLE001 - Hydra raises several kinds of parse errors
        pass
    quoted = f"{key}='{value}'"
    try:
        parsed = parser.parse_override(quoted)
    except Exception:  # noqa: BLE001 - not a quoting problem: Hydra reports it as usual
        return arg
    return quoted if parsed.value() == value else arg


_new_folders: dict[str, str] = {}  # path asked for -> folder this process created for it


def new_folder(path: str) -> str:
    """``path``, created now, or ``path-2``, ``path-3``, ... when another run already holds it: runs named by the
    second they start (``${now:%H-%M-%S}``) and started in the same second get a folder each. ``os.mkdir`` fails
    on an existing folder, so two processes never take the same one. The ranks of one DDP run started by an
    outside launcher (torchrun, srun: ``WORLD_SIZE``/``SLURM_NTASKS`` > 1) share ``path`` as it is."""
    if path in _new_folders:
        return _new_folders[path]
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1) > 1:
        base.mkdir(exist_ok=True)
        folder = base
    else:
        for number in itertools.count(1):
            folder = base if number == 1 else base.with_name(f"{base.name}-{number}")
            try:
                folder.mkdir()
                break
            except FileExistsError:
                continue
    _new_folders[path] = str(folder)
    return str(folder)


def _report_hydra_errors_in_one_line() -> None:
    """Errors Hydra meets before medexp's code runs (a YAML syntax error in a config file, a run folder it cannot
    create) are printed as one line naming the file and the fix, not as Hydra's traceback. Hydra routes every
    stage through ``hydra._internal.utils.run_and_report``; the wrapper translates those two kinds only."""
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report
    if getattr(original, "medexp_wrapped", False):
        return

    def run_and_report(func):
        def translated():
            try:
                return func()
            except Exception as exc:
                message = one_line_message(exc)
                if message is None:
                    raise
                print(f"error: {message}", file=sys.stderr)
                sys.exit(2)

        return original(translated)

    run_and_report.medexp_wrapped = True
    hydra_utils.run_and_report = run_and_report


def one_line_message(exc: BaseException) -> str | None:
    """The one-line message for a misspelled key, a YAML syntax error or a file-system error met while Hydra sets a
    run up."""
    import yaml

    from medexp.errors import MedexpError

    misspelled = _misspelled_key(exc)
    if misspelled is not None:
        return misspelled
    error = exc
    while error is not None and not isinstance(error, MedexpError):  # e.g. raised by the sweeper, outside a job
        error = error.__cause__ or error.__context__
    if error is not None:
        return str(error)
    error = exc
    while error is not None and not isinstance(error, (yaml.YAMLError, OSError)):
        error = error.__cause__ or error.__context__
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return (f"{mark.name} is not valid YAML: {error.problem} (line {mark.line + 1}, column {mark.column + 1}): "
                "fix that file")
    if isinstance(error, OSError) and error.filename is not None:
        return (f"cannot write {error.filename}: {error.strerror}: choose a writable place for outputs with "
                "MEDEXP_OUTPUT_ROOT=... or hydra.run.dir=...")
    return interpolation_message(exc)  # after the file-system errors: creating the run folder resolves one


def in_multirun() -> bool:
    """This job is one of a sweep (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def interpolation_message(exc: BaseException) -> str | None:
    """A ``${...}`` that cannot resolve (a loop: ``name=${tracking.experiment}`` where that is ``${name}``; a key
    that does not exist), found wherever it was first resolved (Hydra's run folder, medexp's config check)."""
    from omegaconf.errors import InterpolationResolutionError

    error = exc
    while error is not None and not isinstance(error, InterpolationResolutionError):
        error = error.__cause__ or error.__context__
    if error is None:
        return None
    key = getattr(error, "full_key", None) or "a value"
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "Recursive interpolation" in reason:
        reason = "the ${...} interpolations it uses lead back to one another (a loop)"
    return f"{key} cannot be resolved: {reason}: fix the ${{...}} on the command line or in the config file " \
           "(medexp-train --cfg job shows the config)"


def _misspelled_key(exc: BaseException) -> str | None:
    """``trainer.max_epoch=2`` -> "did you mean trainer.max_epochs?", from the keys beside the one not found."""
    import difflib

    from hydra.errors import ConfigCompositionException

    cause = exc.__cause__
    if not isinstance(exc, ConfigCompositionException) or getattr(cause, "parent_node", None) is None:
        return None
    key, full_key, parent = str(cause.key), str(cause.full_key), cause.parent_node
    prefix = full_key[: -len(key)]
    close = difflib.get_close_matches(key, [str(k) for k in parent.keys()], n=3, cutoff=0.6)
    if close:
        suggestion = "did you mean " + " or ".join(f"{prefix}{k}" for k in close) + "?"
    else:
        suggestion = f"the keys there are {', '.join(sorted(str(k) for k in parent.keys()))}"
    command = os.path.basename(sys.argv[0])  # the entry point that was called: predict's keys are not train's
    command = command if command.startswith("medexp-") else "medexp-train"
    return (f"{full_key} is not a config key: {suggestion} (+{full_key}=... would add it as a new key; "
            f"{command} --cfg job shows the config)")


def chosen_option(group: str, default) -> str:
    """The option of ``group`` on the command line (``data=chasedb1``), as the user wrote it."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices.get(group, default))
    return str(default)
