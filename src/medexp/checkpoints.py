"""Checkpoints, in one place: found (``resolve``), read and trusted (``read``), slimmed (``slim``), written whole.

A checkpoint is named by a path, ``last`` (the run folder's ``last.ckpt``), an MLflow URI (``runs:/<run id>/model``,
``models:/<name>/<version>``, ``runs:/<run id>/checkpoints/<file>``) or, for ensembles, ``sweep:<parent run id or
sweep name>`` (the best checkpoint of each finished child). Evaluation, prediction, export, fine-tuning, resuming and
ensembles all come through here.

A checkpoint carries its run's resolved config, and evaluation and prediction rebuild the data module and the task
from it with ``hydra.utils.instantiate``. That config is data, never code: ``torch.load(weights_only=True)`` stops
pickled code, and before anything is built

- every value must be plain (text, number, bool, null, lists and mappings of them) and no text may hold an
  interpolation (``${...}``: a reference to another node, ``oc.env``, ``oc.decode`` and every other resolver).
  medexp saves its configs resolved, so an interpolation in a checkpoint was put there by hand; resolved, it could
  turn into a ``_target_`` node that nothing checked, read the environment, or decode new config;
- every ``_target_`` of the groups that get built must be a class (or a medexp ``build_*`` factory) under a
  trusted prefix, or one the user allowed on the command line (``trusted_targets=[mypkg.MyNet]``); a user who trusts
  the classes of the whole file says ``trust_checkpoint=true`` (interpolations stay refused even then).

Anything else is refused in one line, and nothing of the file has run.
"""
from __future__ import annotations

import errno
import importlib
import inspect
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from medexp.errors import ConfigError, DataError, MedexpError
from medexp.models.pretrained import SourceWeights, weights_file

# the groups evaluation and prediction build from a checkpoint's config
BUILT_GROUPS = ("data", "model", "task", "optimizer", "scheduler")
TRUSTED_PREFIXES = (
    "medexp.data.", "medexp.tasks.", "medexp.models.",
    "monai.networks.", "monai.losses.",
    "torch.nn.", "torch.optim.",
    "pytorch_lightning.callbacks.",
)  # fmt: skip
MODEL_URI_SCHEMES = ("runs:/", "models:/")
SWEEP_PREFIX = "sweep:"
MODEL_CHECKPOINT = "model.ckpt"  # the checkpoint inside a run's MLflow model: medexp.export.CHECKPOINT, which
# stays importable without torch for the MLflow writer process (a test keeps the two equal)
SLIM_KEYS = ("state_dict", "hyper_parameters", "pytorch-lightning_version", "best_monitor")
NET_PREFIX = "net."  # the task holds the network as ``net``
PLAIN = (str, int, float, bool, type(None))


class UntrustedCheckpointError(MedexpError):
    """A checkpoint's config names a ``_target_`` outside the allowlist, or holds something that is not data."""


# -- trusting ----------------------------------------------------------------------------------------------------
def iter_targets(config: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted key, target)`` for every ``_target_`` in a nested config."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            if key == "_target_":
                yield path or "<root>", str(value)
            else:
                yield from iter_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(config, (list, tuple)):
        for index, value in enumerate(config):
            yield from iter_targets(value, f"{path}[{index}]")


def _matches(target: str, allowed: str) -> bool:
    """``allowed`` is a whole target or a package/module prefix (``mypkg.`` or ``mypkg``)."""
    return target == allowed or target.startswith(allowed if allowed.endswith(".") else f"{allowed}.")


def is_trusted_target(target: str, trusted_targets: Sequence[str] = ()) -> bool:
    if any(_matches(target, allowed) for allowed in trusted_targets):
        return True
    if not target.startswith(TRUSTED_PREFIXES):
        return False
    module_name, _, name = target.rpartition(".")
    try:  # importing a module under a trusted prefix is safe; what it names must be a class or a builder
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return False
    return inspect.isclass(obj) or (target.startswith("medexp.") and name.startswith("build_"))


def check_targets(config: Mapping[str, Any], source: str, trusted_targets: Sequence[str] = ()) -> None:
    """Refuse a config (from ``source``) whose built groups name anything outside the allowlist."""
    for group in BUILT_GROUPS:
        for key, target in iter_targets(config.get(group), group):
            if not is_trusted_target(target, trusted_targets):
                raise UntrustedCheckpointError(
                    f"{source}: {key}._target_={target!r} is not a class medexp builds from a checkpoint, so nothing "
                    f"was run; if you trust this file, allow it with trusted_targets=[{target}] (or "
                    "trust_checkpoint=true)"
                )


def _not_data(value: Any, path: str) -> tuple[str, Any] | None:
    """The first ``(key, value)`` under ``value`` that is not plain data or holds an interpolation."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found = (where, key) if not isinstance(key, str) or "${" in key else _not_data(item, where)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _not_data(item, f"{path}[{index}]")
            if found:
                return found
        return None
    if not isinstance(value, PLAIN) or (isinstance(value, str) and "${" in value):
        return path or "<root>", value
    return None


def check_data(config: Mapping[str, Any], source: str) -> None:
    """Refuse a config (from ``source``) holding anything but plain values, or an interpolation anywhere."""
    found = _not_data(config, "")
    if found is None:
        return
    key, value = found
    shown = repr(value) if isinstance(value, (str, *PLAIN)) else f"a {type(value).__name__}"
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise UntrustedCheckpointError(
        f"{source}: config key {key} holds {shown}, which is not plain data (an interpolation, a resolver or an "
        "object): a checkpoint's config is read as data and medexp-train saves it resolved, so this file was edited "
        "by hand; nothing was run. Use a checkpoint written by medexp-train"
    )


# -- reading -----------------------------------------------------------------------------------------------------
def read(ckpt_path: str | Path, trusted_targets: Sequence[str] = (), trust: bool = False) -> dict:
    """A local medexp checkpoint's contents, its config checked as data and (unless ``trust``) its classes
    against the allowlist."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist: give ckpt_path=<a .ckpt written by medexp-train>")
    ckpt = _torch_load(path)
    config = _config(ckpt)
    if not isinstance(config, Mapping):
        raise DataError(f"{path} carries no medexp config: it was not written by medexp-train")
    check_data(config, str(path))
    if not trust:
        check_targets(config, str(path), trusted_targets)
    return ckpt


def _torch_load(path: Path) -> Any:
    """A file's tensors and plain containers (``weights_only``: nothing pickled runs)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def _config(ckpt: Any) -> Any:
    """The medexp config a checkpoint carries (None for other files)."""
    hyper_parameters = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
    return hyper_parameters.get("config") if isinstance(hyper_parameters, Mapping) else None


def load_checkpoint(ckpt_path: str, trusted_targets: Sequence[str] = (), trust: bool = False,
                    store: str | None = None) -> dict:
    """``read`` of whatever ``ckpt_path`` names (``resolve``); a model fetched from MLflow is downloaded into a
    temporary folder that is gone once it is read."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medexp-model-") as scratch:
        return read(resolve(ckpt_path, store=store, into=Path(scratch)), trusted_targets, trust=trust)


# -- resolving ---------------------------------------------------------------------------------------------------
def resolve(ckpt_path: str | Path, run_dir: Path | None = None, store: str | None = None,
            into: Path | None = None) -> str:
    """A local checkpoint file for ``ckpt_path``: a path, as it is (``read`` names one that is missing); ``last``,
    the ``last.ckpt`` of ``run_dir``; a run folder, its best checkpoint (``run_folder_checkpoint``); the checkpoint inside an MLflow model (``runs:/<run id>/model``,
    ``models:/<name>/<version>``) or a checkpoint artifact (``runs:/<run id>/checkpoints/<file>``), downloaded from
    ``store`` (default: the one ``MLFLOW_TRACKING_URI`` names) into the folder ``into`` (default: MLflow's own)."""
    ckpt_path = str(ckpt_path)
    if ckpt_path == "last" and run_dir is not None:
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise DataError(f"ckpt_path=last but {last} does not exist: resume with hydra.run.dir=<the old run's folder>")
        return str(last)
    if not ckpt_path.startswith(MODEL_URI_SCHEMES):
        return run_folder_checkpoint(ckpt_path)
    from medexp.tracking.artifacts import download

    folder = download(ckpt_path, store, into)
    if folder.is_file():  # a checkpoint artifact itself (runs:/<id>/checkpoints/best-epoch003.ckpt)
        return str(folder)
    found = sorted(folder.glob(f"**/{MODEL_CHECKPOINT}"))
    if not found:
        raise DataError(f"the MLflow model {ckpt_path} holds no medexp checkpoint: it was not logged by medexp-train")
    return str(found[0])


def run_folder_checkpoint(path: str) -> str:
    """``path`` itself, or for a run folder (``outputs/runs/<date>/<time>_<name>``) the best checkpoint its run kept:
    the one ``metrics.json`` names, else the newest ``checkpoints/best*.ckpt``."""
    import json

    folder = Path(path)
    if not folder.is_dir():
        return path
    recorded = folder / "metrics.json"
    if recorded.is_file():
        best = json.loads(recorded.read_text()).get("best_checkpoint")
        if best and Path(best).is_file():
            return str(best)
    kept = sorted((folder / "checkpoints").glob("best*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not kept:
        raise DataError(f"{folder} is a folder without a best checkpoint (a run folder of medexp-train holds "
                        "checkpoints/best*.ckpt): give ckpt_path=<a .ckpt> or <a run folder>")
    return str(kept[-1])


def resolve_resume(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint a training run resumes from: ``last`` -> this run folder's ``last.ckpt``; a path must exist. A
    requeued Slurm job (preempted, or signalled before its time limit) resumes from its own ``last.ckpt`` when it
    saved one."""
    if ckpt_path is None:
        from medexp.distributed import slurm_requeued

        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if slurm_requeued() and last.is_file() else None
    if ckpt_path != "last" and not Path(ckpt_path).is_file():
        raise DataError(f"checkpoint {ckpt_path} does not exist: give ckpt_path=<path to a .ckpt> or ckpt_path=last")
    return resolve(ckpt_path, run_dir)


def members(ckpt_path: str | Sequence[str]) -> list[str]:
    """The checkpoints an ensemble's ``ckpt_path`` names: itself, a list, or a sweep's children
    (``sweep:<parent run id or sweep name>``, ``runs:/`` URIs of their best checkpoints)."""
    if isinstance(ckpt_path, str):
        if ckpt_path.startswith(SWEEP_PREFIX):
            from medexp.tracking.artifacts import sweep_best_checkpoints

            return sweep_best_checkpoints(ckpt_path.removeprefix(SWEEP_PREFIX))
        return [ckpt_path]
    found = [str(path) for path in ckpt_path]
    if not found:
        raise ConfigError("ckpt_path=[] names no checkpoint: give one, a list, or sweep:<parent run id or name>")
    return found


# -- what other code takes from a checkpoint ---------------------------------------------------------------------
def read_network(source: str) -> SourceWeights:
    """The network weights of the checkpoint ``source`` names (a path or an MLflow model URI), for fine-tuning:
    only tensors are taken, nothing of its config is built (its config is still checked as data). A local file
    without a medexp config is a weights file (``medexp.models.pretrained.weights_file``)."""
    source = str(source)
    if not source.startswith(MODEL_URI_SCHEMES):
        if not Path(source).is_file():
            raise DataError(f"model.pretrained={source}: no such file; give a .ckpt written by medexp-train, "
                            "runs:/<run id>/model, models:/<name>/<version> or a weights file (a state dict)")
        try:
            content = _torch_load(Path(source))
        except DataError as exc:
            raise DataError(f"model.pretrained={source}: {exc}") from None
        if not isinstance(_config(content), Mapping):
            return weights_file(source, content)
    try:
        ckpt = load_checkpoint(source, trust=True)
    except DataError as exc:
        raise DataError(f"model.pretrained={source}: {exc}") from None
    except UntrustedCheckpointError as exc:
        raise UntrustedCheckpointError(f"model.pretrained={source}: {exc}") from None
    state = {k[len(NET_PREFIX):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(NET_PREFIX)}
    if not state:
        raise DataError(f"model.pretrained={source}: the checkpoint holds no network weights (no 'net.' keys)")
    data = ckpt["hyper_parameters"]["config"].get("data") or {}
    return SourceWeights(source, state, data.get("in_channels"))


def check_resumable(ckpt_path: str, task) -> str:
    """A checkpoint to resume from must be a medexp checkpoint (its config data, see the module docstring) holding
    this task's weights with the same shapes: one line naming the first difference, not Lightning's page of missing
    and unexpected keys. Its classes are not checked: the resumed run builds from its own config. Returns where the
    checkpoint was saved (``saved in epoch 2, step 40``; epochs counted from 0 as in checkpoint names) for the resume
    notice."""
    ckpt = read(ckpt_path, trust=True)
    state = ckpt.get("state_dict", {})
    own = task.state_dict()
    missing = [key for key in own if key not in state]
    shapes = [(key, tuple(state[key].shape), tuple(value.shape)) for key, value in own.items()
              if key in state and tuple(state[key].shape) != tuple(value.shape)]
    if shapes:
        key, theirs, ours = shapes[0]
        raise DataError(f"checkpoint {ckpt_path} does not fit this model: {key} is {list(theirs)} there but "
                        f"{list(ours)} here ({len(shapes)} such weights): resume with the config it was trained with")
    if missing:
        raise DataError(f"checkpoint {ckpt_path} lacks {len(missing)} weights of this model (first: {missing[0]}): "
                        "resume with the config it was trained with")
    return f"saved in epoch {ckpt.get('epoch', '?')}, step {ckpt.get('global_step', '?')}"


def slim(ckpt: Mapping[str, Any], path: Path, datamodule_key: str) -> Path:
    """The checkpoint without optimizer and loop state: what inference (and fine-tuning) needs, a third the size;
    ``datamodule_key`` keeps the data module's state (its training-set statistics)."""
    keep = [*SLIM_KEYS, datamodule_key]
    atomic_torch_save({key: ckpt[key] for key in keep if key in ckpt}, path)
    return path


# -- writing ------------------------------------------------------------------------------------------------------
class CheckpointWriteError(MedexpError):
    """A checkpoint could not be written (full or read-only disk); the previous one is untouched."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over it: a reader (or a
    resume) sees the old file or the new one, never a torn one. On failure the temporary file goes and the error is
    one line naming the folder and its free space."""
    import torch

    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        # torch's zip writer reports a failed write (a full disk, a file size limit) as a RuntimeError of its own
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "inline_container" in str(exc)):
            raise CheckpointWriteError(_write_failure(path, exc)) from None
        raise


def _write_failure(path: Path, exc: Exception) -> str:
    try:
        free_bytes = shutil.disk_usage(path.parent).free
        free = f"{free_bytes / 2**20:.0f} MiB free there"
    except OSError:
        free_bytes, free = None, "its free space unknown"
    code = getattr(exc, "errno", None)
    if code is None and free_bytes is not None and free_bytes < 2**26:  # torch's error names no errno
        code = errno.ENOSPC
    reason = getattr(exc, "strerror", None) or "the write stopped part way"
    if code == errno.ENOSPC:
        fix = "free some space or move outputs elsewhere (MEDEXP_OUTPUT_ROOT=... or hydra.run.dir=...)"
    elif code in (errno.EACCES, errno.EROFS, errno.EPERM):
        fix = "the folder is not writable: move outputs elsewhere (MEDEXP_OUTPUT_ROOT=... or hydra.run.dir=...)"
    else:
        fix = "check the disk, or move outputs elsewhere (MEDEXP_OUTPUT_ROOT=...)"
    return (f"cannot write checkpoint {path.name} in {path.parent} ({reason}; {free}): {fix}; "
            "the previous checkpoints there are intact")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with ``atomic_torch_save``: Lightning's own save falls back to a plain copy from
    the system temp folder, which a full disk truncates."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)
