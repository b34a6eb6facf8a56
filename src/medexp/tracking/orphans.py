"""Who writes a RUNNING run, and closing the runs whose writer is gone.

Every run medexp opens (or reopens, to resume or evaluate) carries the process that owns it: ``medexp.host``,
``medexp.pid`` and that process's start time ``medexp.pid_started`` (a later process given the same pid is not
the owner). A killed trainer's run is normally closed by the writer process (``medexp.tracking.writer``), but when
the whole process group dies at once (a closed terminal or SSH session, ``docker kill``, Slurm killing a job) the
writer dies with it and the run would stay RUNNING for ever. ``close_orphans`` closes such runs FAILED, with the tag
``medexp.ended_by`` saying so: every RUNNING run of this host whose owning process is gone. It runs when the next
run opens in the same experiment (in the writer process), in ``medexp-compare`` and as ``medexp-runs repair``. Runs
of other hosts are left alone: only their own host can tell whether their process still lives.

Pure Python until a client is passed in: MLflow is imported by the caller.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

HOST_TAG = "medexp.host"
PID_TAG = "medexp.pid"
PID_STARTED_TAG = "medexp.pid_started"  # the owner's start time (epoch seconds): a reused pid is another process
ENDED_BY_TAG = "medexp.ended_by"  # why something other than the run's own process closed it
_START_TOLERANCE_S = 2.0  # /proc's start time is in clock ticks from a boot time rounded to the second


def owner_tags() -> dict[str, str]:
    """The tags naming this process as the owner of the run it opens."""
    started = process_start_time(os.getpid())
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            PID_STARTED_TAG: "" if started is None else f"{started:.0f}"}


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), from ``/proc``; None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) may hold spaces and parentheses: count fields after its closing one
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def owner_alive(pid: int, started: float | None) -> bool:
    """Whether process ``pid`` of this host, started at ``started``, still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    now_started = process_start_time(pid)
    return started is None or now_started is None or abs(now_started - started) <= _START_TOLERANCE_S


@dataclass
class Repair:
    """What ``close_orphans`` did: the runs it closed, and the RUNNING runs it could not judge from this host."""

    closed: list[Any] = field(default_factory=list)  # MLflow runs, as they were before closing
    elsewhere: list[Any] = field(default_factory=list)  # RUNNING on another host, or without an owner

    def summary(self, elsewhere: bool = True) -> str | None:
        """One line for the terminal (the runs closed; and those of other hosts if ``elsewhere``), or None."""
        parts = []
        if self.closed:
            names = ", ".join(f"{r.info.run_name} ({r.info.run_id})" for r in self.closed[:5])
            more = f" and {len(self.closed) - 5} more" if len(self.closed) > 5 else ""
            parts.append(f"closed {len(self.closed)} orphaned run(s) FAILED (their process is gone): {names}{more}")
        if self.elsewhere and elsewhere:
            parts.append(f"{len(self.elsewhere)} RUNNING run(s) belong to another host or to no known process "
                         "(run medexp-runs repair on their host)")
        return "medexp: " + "; ".join(parts) if parts else None


def close_orphans(client: Any, experiment_ids: list[str] | None = None, closed_by: str = "medexp") -> Repair:
    """Close FAILED every RUNNING run (of ``experiment_ids``, else of the whole store) that this host owns and whose
    owning process is gone; see the module docstring."""
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    repair = Repair()
    if not experiment_ids:
        return repair
    host = socket.gethostname()
    for run in client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=50000):
        tags = run.data.tags
        if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            repair.elsewhere.append(run)
            continue
        pid, started = int(tags[PID_TAG]), tags.get(PID_STARTED_TAG)
        if owner_alive(pid, float(started) if started else None):
            continue
        client.set_tag(run.info.run_id, ENDED_BY_TAG,
                       f"{closed_by}: process {pid} on {host} that ran it is gone (killed with its process group?); "
                       f"closed FAILED at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        client.set_terminated(run.info.run_id, "FAILED")
        repair.closed.append(run)
    return repair


def reopen_run(client: Any, run_id: str, owner: dict[str, str] | None = None) -> Any:
    """Set a finished or killed run RUNNING again (a resume, an evaluation, a resumed study's parent): owned by
    ``owner`` (``owner_tags()`` of the process that writes it; this one by default), and no longer "ended by"
    whatever stopped it. Returns the run as stored."""
    from mlflow.entities import RunTag

    client.update_run(run_id, status="RUNNING")
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in (owner or owner_tags()).items()])
    stored = client.get_run(run_id)
    if ENDED_BY_TAG in stored.data.tags:
        client.delete_tag(run_id, ENDED_BY_TAG)
    return stored
