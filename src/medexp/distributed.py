"""DDP inside Hydra multiruns.

Lightning starts DDP ranks 1..N-1 by re-running the whole command line (``_hydra_subprocess_cmd``): under ``-m``
every rank would launch its own sweep, and the DDP variables left in ``os.environ`` after job 0 make job 1 believe
it is a child and spawn nobody (Lightning #11300, #18145; hydra #2070). Here a rank is re-launched as a *single
run* of its job: the job's own overrides, its output folder, the same config source; and each job's DDP state is
torn down after it, so the next job starts clean.
"""
from __future__ import annotations

import os
import sys

from hydra.experimental.callback import Callback

DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "RANK",
           "LOCAL_WORLD_SIZE")
CONFIG_SOURCE_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def config_source_args(argv: list[str]) -> list[str]:
    """The ``--config-path/--config-name/--config-dir`` options of a command line (both ``-x v`` and ``-x=v``)."""
    kept, i = [], 0
    while i < len(argv):
        arg = argv[i]
        flag = arg.split("=", 1)[0]
        if flag in CONFIG_SOURCE_FLAGS:
            kept.append(arg)
            if "=" not in arg and i + 1 < len(argv):
                kept.append(argv[i + 1])
                i += 1
        i += 1
    return kept


def job_rank_command(local_rank: int) -> tuple[list[str], str]:
    """The command that starts DDP rank ``local_rank`` of the current multirun job, and its working directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    import __main__

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, os.path.abspath(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += config_source_args(sys.argv[1:])
    command += list(hydra_cfg.overrides.task)
    command += [f"hydra.run.dir={hydra_cfg.runtime.output_dir}", f"hydra.job.name=train_ddp_process_{local_rank}",
                "hydra.output_subdir=null"]
    return command, get_original_cwd()


def use_job_rank_commands() -> None:
    """Make Lightning's subprocess launcher start ranks with ``job_rank_command`` (multirun jobs only)."""
    from pytorch_lightning.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = job_rank_command


def end_job_distributed() -> None:
    """Forget this job's process group and DDP variables so the next job of the sweep starts its own ranks."""
    import torch.distributed as dist

    _retire_rank_observers()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name in DDP_ENV:
        os.environ.pop(name, None)


def _retire_rank_observers(timeout: float = 60.0) -> None:
    """Wait for this job's other ranks to exit and stop Lightning's observer of them. The observer thread outlives
    the job, and a rank that exits non-zero after rank 0 has moved on (gloo can abort in a rank's teardown) makes
    it SIGKILL rank 0, i.e. the whole sweep, leaving the next job's ranks orphaned (seen in CI: a hung test)."""
    import subprocess
    import threading

    for observer in threading.enumerate():
        ranks = getattr(observer, "_child_processes", None)
        if observer.name != "child-process-observer" or ranks is None:
            continue
        observer._child_processes = []  # its next look finds nothing to watch and ends (Lightning's private state)
        for rank in ranks:
            try:
                rank.wait(timeout)
            except subprocess.TimeoutExpired:
                rank.kill()


# -- Slurm preemption ----------------------------------------------------------------------------------------------
def slurm_job_id() -> str | None:
    """This Slurm job as ``scontrol`` names it (``<array job>_<task>`` for an array task), or None outside Slurm."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def slurm_requeued() -> bool:
    """This Slurm job runs again after a requeue (preemption, ``scontrol requeue``, a signalled time limit)."""
    return slurm_job_id() is not None and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def requeue_slurm_job() -> None:
    """Put this Slurm job back in the queue (it restarts in the same job id, so in the same run folder), as after
    Slurm's pre-timeout signal. The job must have been submitted requeueable (submitit's are; ``sbatch --requeue``)."""
    import subprocess

    job = slurm_job_id()
    done = subprocess.run(["scontrol", "requeue", str(job)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"scontrol requeue {job} failed: {done.stderr.strip()}: the job ends here, resume it with "
                           "ckpt_path=last in its run folder")


# -- one GPU per parallel local job ----------------------------------------------------------------------------------
_SWEEP_PID = "MEDEXP_SWEEP_PID"
_held_gpu: tuple[str, object] | None = None  # (GPU, its open lock file) for this worker process's life


class GpuPerWorker(Callback):
    """Hydra callback: each worker process of a parallel local sweep (``hydra/launcher=joblib``) sees one GPU of its
    own through ``CUDA_VISIBLE_DEVICES``, so ``n_jobs`` = number of GPUs runs one trial per GPU (Hydra #1331/#1974).

    The GPUs are those the sweep was given (``CUDA_VISIBLE_DEVICES``) or all it finds. A worker claims a free one by
    a lock file in the sweep folder at its first job and keeps it: once CUDA starts in a process, its devices are
    fixed, and joblib reuses worker processes across jobs. With more workers than GPUs the extra ones share.
    A Hydra callback rather than a launcher: it runs in the job's process before the task imports torch.
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        os.environ[_SWEEP_PID] = str(os.getpid())  # workers inherit it: a job in another process is a worker's

    def on_job_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        in_worker = os.environ.get(_SWEEP_PID) not in (None, str(os.getpid()))
        if not in_worker or not str(hydra_cfg.launcher.get("_target_", "")).endswith("JoblibLauncher"):
            return
        gpus = _sweep_gpus()
        if gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = _claim_gpu(gpus, hydra_cfg.sweep.dir)


def _sweep_gpus() -> list[str]:
    visible = os.environ.get("MEDEXP_SWEEP_GPUS") or os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        os.environ["MEDEXP_SWEEP_GPUS"] = visible  # the sweep's set, kept once this worker narrows its own view
        return [g for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]  # NVML's count: CUDA is not started


def _claim_gpu(gpus: list[str], sweep_dir: str) -> str:
    global _held_gpu
    import fcntl
    from pathlib import Path

    if _held_gpu is not None:
        return _held_gpu[0]
    folder = Path(sweep_dir) / ".gpus"
    folder.mkdir(parents=True, exist_ok=True)
    for gpu in gpus:
        handle = open(folder / f"{gpu}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _held_gpu = (gpu, handle)  # the lock lives as long as this process
        return gpu
    return gpus[os.getpid() % len(gpus)]  # more workers than GPUs


# -- multi-node layout -----------------------------------------------------------------------------------------------
def launch_layout(what: str) -> int:
    """``nodes`` or ``devices`` (processes per node) of the launch this process belongs to: torchrun's environment
    (``--nnodes``, ``--nproc-per-node``), else Slurm's (``srun`` with ``--ntasks-per-node``), else one and one.
    The ``${medexp_launch:nodes}`` resolver of ``trainer=ddp_multinode``: Lightning checks nodes x devices against
    the world size the launcher set up, so both come from that launcher."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and "LOCAL_WORLD_SIZE" in env:
        devices, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
        nodes = world // devices
    elif "SLURM_NTASKS" in env and "SLURM_JOB_NUM_NODES" in env:
        nodes = int(env["SLURM_JOB_NUM_NODES"])
        devices = int(env.get("SLURM_NTASKS_PER_NODE") or int(env["SLURM_NTASKS"]) // nodes)
    else:
        nodes, devices = 1, 1
    layout = {"nodes": nodes, "devices": devices}
    if what not in layout:
        raise ValueError(f"medexp_launch:{what}: use nodes or devices")
    return layout[what]


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("medexp_launch"):
        OmegaConf.register_new_resolver("medexp_launch", launch_layout)
