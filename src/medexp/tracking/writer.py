"""MLflow writes in a process of their own: ``python -m medexp.tracking.writer``, one per training process.

Why a process and not a thread: before its first write MLflow's client spends ~2 s of pure-Python CPU (imports,
the sqlite store's schema check). On a thread that competes with the trainer for the GIL; in a process it runs on
the other core while the trainer imports torch, so a logged run starts training as early as an unlogged one.
The process also outlives a killed trainer: when its stdin closes before a run was ended (SIGKILL, OOM killer),
it closes that run as FAILED instead of leaving it RUNNING for ever.

Protocol, JSON lines: the trainer sends ``{"op": ..., "run": <handle>, ...}`` on stdin, in order; the writer
answers on stdout with ``{"run": <handle>, "reply": "opened" | "error" | "ended", ...}``. A failed write is
answered at once with ``error``; later writes of that run are skipped and ``ended`` repeats it.

This module imports neither torch nor MLflow at import time: the trainer side (``WriterProcess``) is light and the
process side imports MLflow itself.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from typing import Any

from medexp.quiet import quiet_libraries
from medexp.redact import redact_text
from medexp.tracking.http import bound_mlflow_http
from medexp.tracking.orphans import ENDED_BY_TAG, close_orphans, reopen_run

MAX_PARAMS_PER_BATCH = 100  # MLflow's limits per log_batch call
MAX_METRICS_PER_BATCH = 1000
REPLY_TIMEOUT_S = 600.0  # ``end`` waits for every queued write, artifacts included
CONNECT_HANDLE = "-"  # the "run" of ``connect``, which opens a store before any run exists


# -- the trainer's side -------------------------------------------------------------------------------------------
class WriterProcess:
    """Starts the writer process, sends it operations and routes its replies to the run they belong to."""

    def __init__(self):
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "medexp.tracking.writer"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._send_lock = threading.Lock()
        self._replies: dict[str, queue.Queue] = {}
        self.run_ids: dict[str, str] = {}
        self.experiment_ids: dict[str, str] = {}
        self.run_names: dict[str, str] = {}  # as the store has them (a resumed run keeps its first name)
        self.errors: dict[str, str] = {}
        self._opened: dict[str, threading.Event] = {}  # set when a run's ``open`` is answered, either way
        threading.Thread(target=self._read_replies, name="mlflow-writer-replies", daemon=True).start()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def send(self, op: str, run: str, **fields: Any) -> None:
        self._replies.setdefault(run, queue.Queue())
        line = json.dumps({"op": op, "run": run, **fields}, default=str) + "\n"
        with self._send_lock:
            try:
                self._proc.stdin.write(line)
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                self.errors.setdefault(run, f"the MLflow writer process has exited (code {self._proc.poll()})")

    def request(self, op: str, run: str, **fields: Any) -> dict:
        """Send ``op`` and wait for its reply (``end``: everything sent before it is written by then)."""
        self.send(op, run, **fields)
        if run in self.errors and not self.alive():
            return {"error": self.errors[run]}
        try:
            return self._replies[run].get(timeout=REPLY_TIMEOUT_S)
        except queue.Empty:
            return {"error": f"the MLflow writer did not answer within {REPLY_TIMEOUT_S:.0f} s"}

    def wait_opened(self, run: str, timeout: float) -> bool:
        """Wait until ``run``'s ``open`` was answered (opened or failed); False if it was not within ``timeout``."""
        return self._answered(run).wait(timeout)

    def _answered(self, run: str) -> threading.Event:
        return self._opened.setdefault(run, threading.Event())

    def forget(self, run: str) -> None:
        """The run has ended: drop what was kept for it."""
        for kept in (self._replies, self.run_ids, self.experiment_ids, self.run_names, self.errors, self._opened):
            kept.pop(run, None)

    def _read_replies(self) -> None:
        for line in self._proc.stdout:
            reply = json.loads(line)
            run = reply["run"]
            if reply["reply"] == "opened":
                self.run_ids[run] = reply["run_id"]
                self.experiment_ids[run] = reply["experiment_id"]
                self.run_names[run] = reply.get("run_name")
                self._answered(run).set()
            elif reply["reply"] == "error":
                self.errors.setdefault(run, reply["error"])
                self._answered(run).set()
            else:
                self._replies.setdefault(run, queue.Queue()).put(reply)
        gone = f"the MLflow writer process has exited (code {self._proc.wait()})"
        for run, waiting in list(self._replies.items()):
            self.errors.setdefault(run, gone)
            self._answered(run).set()
            waiting.put({"error": gone})

    def close(self, timeout: float = 30.0) -> None:
        """End of the trainer: the writer closes any run still open as FAILED, then exits.

        Waits only while a run is still open (so its FAILED lands before the command returns); otherwise the
        writer's own exit (~0.5 s of interpreter teardown) needn't hold up the trainer's."""
        try:
            self._proc.stdin.close()
            if self._replies.keys() - {CONNECT_HANDLE}:
                self._proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()


_PROCESS: WriterProcess | None = None
_PROCESS_LOCK = threading.Lock()


def writer_process() -> WriterProcess:
    """This process's writer, started on first use (or again if it died)."""
    global _PROCESS
    with _PROCESS_LOCK:
        if _PROCESS is None or not _PROCESS.alive():
            _PROCESS = WriterProcess()
            atexit.register(_PROCESS.close)
        return _PROCESS


def watch_run(tracking_uri: str, run_id: str) -> None:
    """Have the writer close ``run_id`` FAILED should this process die before ``unwatch_run``: runs this process
    writes itself (a sweep's parent) end like the runs the writer writes."""
    writer_process().send("adopt", f"watch-{run_id}", uri=tracking_uri, run_id=run_id)


def unwatch_run(run_id: str) -> None:
    writer_process().send("release", f"watch-{run_id}")
    writer_process().forget(f"watch-{run_id}")


def start_early(tracking_uri: str) -> None:
    """Start the writer and let it open the store now, while the trainer is still importing torch."""
    writer_process().send("connect", CONNECT_HANDLE, uri=tracking_uri)


def first_line(exc: BaseException) -> str:
    """An exception's message as one line: SQLAlchemy appends the SQL and a link, MLflow a server's traceback."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def server_gone(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a connection that failed or timed out (MLflow wraps requests' errors)."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (requests.ConnectionError, requests.Timeout)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# -- the writer's side --------------------------------------------------------------------------------------------
class _Run:
    def __init__(self, uri: str):
        self.uri = uri
        self.client = None  # set by ``open``
        self.run_id: str | None = None
        self.error: str | None = None
        self.server_gone = False  # a write failed because the server stopped answering: ending it would wait too
        # a resumed training's run: the last step MLflow holds for each metric (looked up when first logged again);
        # None for any other run
        self.logged_steps: dict[str, int] | None = None
        self.keep_state = False  # an existing run written to without reopening it (``MlflowRunLogger``)


class _Writer:
    def __init__(self, out):
        self.out = out
        self.clients: dict[str, Any] = {}
        self.runs: dict[str, _Run] = {}

    def reply(self, run: str, kind: str, **fields: Any) -> None:
        self.out.write(json.dumps({"run": run, "reply": kind, **fields}) + "\n")
        self.out.flush()

    def client(self, uri: str):
        if uri not in self.clients:
            from medexp.tracking.client import open_client

            self.clients[uri] = open_client(uri)  # imports and opens (or creates, or migrates) the store
        return self.clients[uri]

    def handle(self, message: dict) -> None:
        op, handle = message["op"], message["run"]
        if op == "connect":
            try:
                self.client(message["uri"])
            except Exception:  # noqa: BLE001 - the run's own ``open`` reports it
                pass
            return
        if op == "adopt":  # a run another part of this process made (a sweep's parent): closed FAILED if we die
            run = self.runs[handle] = _Run(message["uri"])
            run.client, run.run_id = self.client(run.uri), message["run_id"]
            return
        if op == "release":  # ... and ended properly by that part
            self.runs.pop(handle, None)
            return
        run = self.runs.get(handle)
        if op == "open":
            run = self.runs[handle] = _Run(message["uri"])
        if run is None:
            self.reply(handle, "error", error=f"MLflow writer: {op!r} for a run that was never opened")
            return
        if op == "end":
            self._end(run, message["status"])
            del self.runs[handle]
            self.reply(handle, "ended", error=run.error)
            return
        if run.error is not None:
            return
        try:
            getattr(self, f"_{op}")(run, handle, message)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the trainer, named
            run.error = self._describe(op, run, exc)
            run.server_gone = server_gone(exc)
            self.reply(handle, "error", error=run.error)

    @staticmethod
    def _describe(op: str, run: _Run, exc: Exception) -> str:
        what = redact_text(f"{type(exc).__name__}: {first_line(exc)}")
        if op == "open":
            return (f"cannot open MLflow run at {redact_text(run.uri)}: {what}; check MLFLOW_TRACKING_URI / "
                    "tracking.uri, or run with logger=csv")
        return f"MLflow {op} failed: {what}"

    def _open(self, run: _Run, handle: str, message: dict) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        from medexp.tracking.store import get_or_create_experiment

        run.client = self.client(run.uri)
        owner = message.get("owner", {})  # the trainer's process: if it dies with us, the next run closes this one
        run.keep_state = bool(message.get("keep_state"))
        if message.get("run_id"):  # a resumed run: open again, and no longer "ended by" whatever stopped it
            run.run_id = message["run_id"]
            # an evaluation of a finished run (keep_state) adds to it and leaves its status and owner alone
            stored = run.client.get_run(run.run_id) if run.keep_state else reopen_run(run.client, run.run_id, owner)
            experiment_id, name = stored.info.experiment_id, stored.info.run_name
            run.logged_steps = {} if message.get("skip_logged_steps") else None
        else:
            experiment_id = get_or_create_experiment(run.client, message["experiment"], run.uri)
            name = message.get("run_name")
            tags = {**message.get("tags", {}), **owner, **({MLFLOW_RUN_NAME: name} if name else {})}
            created = run.client.create_run(experiment_id, tags=tags, run_name=name)
            run.run_id, name = created.info.run_id, created.info.run_name
        self.reply(handle, "opened", run_id=run.run_id, experiment_id=experiment_id, run_name=name)
        self._close_orphans(run.client, experiment_id)

    @staticmethod
    def _close_orphans(client, experiment_id: str) -> None:
        """Runs of this host (in this experiment: a team server holds many) whose whole process group was killed:
        closed now that a run opens the store again."""
        try:
            summary = close_orphans(client, [experiment_id], closed_by="writer of the next run").summary(elsewhere=False)
        except Exception as exc:  # noqa: BLE001 - the new run goes on; medexp-runs repair can do it later
            summary = f"medexp: could not close orphaned runs ({type(exc).__name__}: {exc})"
        if summary:
            print(summary, file=sys.stderr, flush=True)

    def _run_id_file(self, run: _Run, handle: str, message: dict) -> None:
        with open(message["path"], "w") as f:
            f.write(run.run_id)

    def _params(self, run: _Run, handle: str, message: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in message["params"]]
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            run.client.log_batch(run.run_id, params=params[start : start + MAX_PARAMS_PER_BATCH])

    def _tags(self, run: _Run, handle: str, message: dict) -> None:
        from mlflow.entities import RunTag

        run.client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in message["tags"].items()])

    def _metrics(self, run: _Run, handle: str, message: dict) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(k, v, stamp, step) for k, v, stamp, step in message["metrics"]
                   if run.logged_steps is None or step > self._last_logged_step(run, k)]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            run.client.log_batch(run.run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])

    @staticmethod
    def _last_logged_step(run: _Run, key: str) -> int:
        """The last step of ``key`` the run held when it was resumed: a resumed training repeats the steps after its
        checkpoint (the learning rate of the epoch it resumes in), which the killed process may have logged."""
        if key not in run.logged_steps:
            history = run.client.get_metric_history(run.run_id, key)
            run.logged_steps[key] = max((m.step for m in history), default=-1)
        return run.logged_steps[key]

    def _experiment_view(self, run: _Run, handle: str, message: dict) -> None:
        """The experiment's ``medexp`` view of the runs table (``medexp.tracking.views``), as this run sees it."""
        from medexp.tracking.views import VIEW_TAG

        experiment_id = run.client.get_run(run.run_id).info.experiment_id
        run.client.set_experiment_tag(experiment_id, VIEW_TAG, message["state"])

    def _dataset(self, run: _Run, handle: str, message: dict) -> None:
        """One training data set as an MLflow dataset input (the UI's Datasets column); digest: MLflow keeps 36
        characters at most (the full sha256 is in the profile and the ``dataset.sha256`` tag)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(message["name"], message["digest"], "local", json.dumps({"uri": message["source"]}),
                          profile=message["profile"])
        run.client.log_inputs(run.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])

    def _artifact(self, run: _Run, handle: str, message: dict) -> None:
        run.client.log_artifact(run.run_id, message["path"], message.get("artifact_path"))

    def _model(self, run: _Run, handle: str, message: dict) -> None:
        """The run's MLflow model (a LoggedModel) from the files the trainer wrote (``medexp.export.pyfunc``)."""
        from pathlib import Path

        from medexp.export.pyfunc import MODEL_ARTIFACT, log_model

        register_as = message.get("register_as")
        version = log_model(run.client, run.run_id, Path(message["folder"]), register_as, message.get("monitor"),
                            message.get("monitor_mode", "max"))
        tags = {"model.uri": f"runs:/{run.run_id}/{MODEL_ARTIFACT}"}
        if version is not None:
            tags["model.registered"] = f"models:/{register_as}/{version}"
        self._tags(run, handle, {"tags": tags})

    def _end(self, run: _Run, status: str) -> None:
        if run.run_id is None or run.server_gone or run.keep_state:  # server gone: an orphan, closed once back
            return
        try:
            run.client.set_terminated(run.run_id, status)
        except Exception as exc:  # noqa: BLE001
            run.error = run.error or self._describe("end", run, exc)

    def abandon_open_runs(self) -> None:
        """The trainer went away without ending these runs: close them FAILED, saying why."""
        for run in self.runs.values():
            if run.run_id is None or run.keep_state:  # not this process's run to close
                continue
            try:
                run.client.set_tag(run.run_id, ENDED_BY_TAG, "writer: the training process exited without "
                                   "closing the run (killed?)")
            except Exception:  # noqa: BLE001 - still try to close it
                pass
            self._end(run, "FAILED")


def main() -> None:
    # Ctrl-C reaches the whole process group: the trainer handles it and ends its run KILLED through us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # likewise; stdin closes when the trainer is gone
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # likewise (a closed terminal hangs up the whole group)
    bound_mlflow_http()  # a server that stops answering fails a write in seconds, not minutes
    out, sys.stdout = sys.stdout, sys.stderr  # only replies go to the trainer; anything printed goes to stderr
    quiet_libraries()  # a new store's table-creation lines among them
    writer = _Writer(out)
    for line in sys.stdin:
        writer.handle(json.loads(line))
    writer.abandon_open_runs()


if __name__ == "__main__":
    main()
