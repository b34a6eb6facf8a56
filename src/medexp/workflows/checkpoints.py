"""Checkpoints are data: reading one builds only classes medexp trusts, and writing one never leaves a torn file.

A checkpoint carries its run's resolved config, and evaluation and prediction rebuild the data module and the task
from it with ``hydra.utils.instantiate``. ``torch.load(weights_only=True)`` stops pickled code, but a ``_target_`` in
that config would still be called: a crafted file naming ``shutil.copyfile`` copies files. So before anything is
built, every ``_target_`` of the groups that get built must be a class (or a medexp ``build_*`` factory) under a
trusted prefix, or one the user allowed on the command line (``trusted_targets=[mypkg.MyNet]``); a user who trusts
the whole file says ``trust_checkpoint=true``.
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

from medexp.errors import DataError, MedexpError

# the groups evaluation and prediction build from a checkpoint's config
BUILT_GROUPS = ("data", "model", "task", "optimizer", "scheduler")
TRUSTED_PREFIXES = (
    "medexp.data.", "medexp.tasks.", "medexp.models.",
    "monai.networks.", "monai.losses.",
    "torch.nn.", "torch.optim.",
    "pytorch_lightning.callbacks.",
)  # fmt: skip


class UntrustedCheckpointError(MedexpError):
    """A checkpoint's config names a ``_target_`` outside the allowlist."""


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


def load_checkpoint(ckpt_path: str | Path, trusted_targets: Sequence[str] = (), trust: bool = False) -> dict:
    """A medexp checkpoint's contents, its config checked against the allowlist (unless ``trust``)."""
    import torch

    path = Path(ckpt_path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist: give ckpt_path=<a .ckpt written by medexp-train>")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    config = ckpt.get("hyper_parameters", {}).get("config") if isinstance(ckpt, Mapping) else None
    if not isinstance(config, Mapping):
        raise DataError(f"{path} carries no medexp config: it was not written by medexp-train")
    if not trust:
        check_targets(config, str(path), trusted_targets)
    return ckpt


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
