"""A signal turned into a saved checkpoint and a non-zero exit.

Schedulers stop jobs with SIGTERM (Slurm, Kubernetes, ``docker stop``), wait a grace period, then SIGKILL; Slurm can
warn with SIGUSR1 before a time limit (``--signal=USR1@90``); a closed terminal or SSH session sends SIGHUP.
Lightning notices SIGTERM only at batch boundaries and then ends the process with exit code 0. ``SaveOnSignal``
makes these signals stop the loops at the next batch boundary (within one step), saves ``last.ckpt`` there so
``ckpt_path=last`` resumes, and the training flow exits with ``128 + signal`` (143 for SIGTERM, 129 for SIGHUP), as
a killed process does, after the tracking closer ended the run KILLED.
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from medexp.distributed import requeue_slurm_job, slurm_job_id

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)


class RunSignalled(SystemExit):
    """The run stopped on a signal: ``code`` is the exit status a process killed by it reports."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


class SaveOnSignal(pl.Callback):
    """Stop at the next batch boundary on SIGTERM/SIGUSR1/SIGHUP and save ``<dirpath>/last.ckpt`` there (see
    module)."""

    def __init__(self, dirpath: Path):
        self.dirpath = Path(dirpath)
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        def handle(signum, frame):
            self.signum = signum
            # Lightning's own flag: its training and evaluation loops raise SIGTERMException at the next boundary
            trainer._signal_connector.received_sigterm = True

        for signum in HANDLED_SIGNALS:
            self._previous[signum] = signal.signal(signum, handle)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        from pytorch_lightning.trainer.states import TrainerFn
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        # while fitting (its validation included); a stop during the final test leaves the checkpoints as they are
        fitting = trainer.state.fn == TrainerFn.FITTING
        if self.signum is not None and isinstance(exception, SIGTERMException) and fitting:
            trainer.save_checkpoint(self.dirpath / "last.ckpt")
            if self.signum == signal.SIGUSR1 and trainer.is_global_zero and slurm_job_id() is not None:
                requeue_slurm_job()  # Slurm's pre-timeout warning: back in the queue, to resume from last.ckpt

    def exit_status(self, exception: BaseException) -> RunSignalled | None:
        """What the flow should raise instead of Lightning's ``SIGTERMException`` (which exits 0)."""
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            return RunSignalled(self.signum or signal.SIGTERM)
        return None
