"""``medexp.callbacks.signals``: a signal ends a run with the status a process killed by it reports (the signal's
effect on a training run, checkpoint and MLflow status, is tested end to end in test_lifecycle)."""
from __future__ import annotations

import signal

from pytorch_lightning.utilities.exceptions import SIGTERMException

from medexp.callbacks.signals import RunSignalled, SaveOnSignal


def test_a_signalled_run_exits_128_plus_the_signal(tmp_path):
    callback = SaveOnSignal(tmp_path)
    assert callback.exit_status(ValueError("not a signal")) is None
    assert callback.exit_status(SIGTERMException()).code == 143  # Lightning's flag alone: SIGTERM
    callback.signum = signal.SIGUSR1
    status = callback.exit_status(SIGTERMException())
    assert isinstance(status, RunSignalled) and status.code == 128 + signal.SIGUSR1
