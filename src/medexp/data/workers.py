"""Loader processes for file-based data: how many, and how they start.

``data.num_workers: auto`` gives each training process ``min(4, cores per process - 1)`` workers (none on a
machine of one core per process): one core stays with the training loop, and past four workers a patch loader
reading preprocessed cases is rarely the bottleneck. Cores are counted from the process's CPU affinity (what a
Slurm or container limit grants), not ``nproc``, which obeys ``OMP_NUM_THREADS``.

Workers start with ``forkserver``, never ``fork``: by the time a loader starts, the training process runs torch's
and MLflow's threads, and a child forked from a process with threads can inherit a lock held by one of them and hang
(as a test of the folder claim once did in CI). The server starts from a fresh interpreter and forks each worker from
there; datasets and transforms therefore travel by pickle (tensors by shared memory, memory-mapped arrays by path).
The server imports medexp's data modules (torch, MONAI) once, so the workers of every loader start without
importing them again.
"""
from __future__ import annotations

import multiprocessing
import os

from medexp.errors import ConfigError

MAX_AUTO_WORKERS = 4
_SERVER_PRELOAD = ["__main__", "medexp.data.segmentation"]  # torch and MONAI with it


def worker_context() -> multiprocessing.context.BaseContext:
    """The ``forkserver`` start method, its server preloading the data modules (set before it first starts).

    Tensors travel to the workers as shared-memory files named in the pickle (torch's ``file_system`` strategy), not
    as file descriptors: the fork server hands a new process at most 256 descriptors, and a memory cache of
    hundreds of cases holds thousands of tensors (HC18's 999 images stopped the first worker with "too many fds")."""
    import torch.multiprocessing

    torch.multiprocessing.set_sharing_strategy("file_system")
    multiprocessing.set_forkserver_preload(_SERVER_PRELOAD)
    return multiprocessing.get_context("forkserver")


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def loader_workers(setting: int | str, processes: int = 1) -> int:
    """Workers per loader for ``data.num_workers`` (a number, or ``auto``) with ``processes`` training processes on
    this machine (DDP ranks share its cores)."""
    if setting == "auto":
        per_process = available_cores() // max(1, processes)
        return max(0, min(MAX_AUTO_WORKERS, per_process - 1))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ConfigError(f"data.num_workers={setting!r} is not valid: give a whole number >= 0, or auto")
    return setting
