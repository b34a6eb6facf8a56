"""A sweep in MLflow: one parent run per sweep, one child run per job, nested by the ``mlflow.parentRunId`` tag.

``MLflowSweepCallback`` (a Hydra callback) creates the parent when the multirun starts and writes a small JSON
record into ``hydra.sweep.dir``; each job, in whatever process or machine the launcher runs it, reads that record
through :func:`child_run_context` to name and tag its own run, and the callback's ``on_job_end`` records the job's
outcome (objective, COMPLETE/PRUNED/FAIL) on it. When the multirun ends, the parent gets the ranked summary
(CSV, Markdown, objective plot), the best trial's values and its final status; a sweep that only repeats one
experiment over ``REPEAT_KEYS`` (folds, seeds) also its mean ± std and report/index.html (each run's metrics, their
mean ± std and the t interval of the mean). Everything is read back from
MLflow, so the summary of a resumed Optuna study covers all its trials, whichever invocation ran them.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from medexp.quiet import quiet_libraries
from medexp.redact import redact_text
from medexp.sweeps import OPTUNA_SWEEPER_TARGET, search_params, study_name
from medexp.sweeps.outcome import COMPLETE, FAIL, PRUNED, job_outcome
from medexp.sweeps.summary import (
    best_row,
    columns_of,
    fmt,
    is_number,
    mean_and_std,
    plot_objective,
    rank,
    to_markdown,
    to_text,
    write_csv,
)
from medexp.tracking.http import bound_mlflow_http
from medexp.tracking.orphans import owner_tags, reopen_run
from medexp.tracking.plan import ARTIFACT_PATH as PLAN_ARTIFACTS
from medexp.tracking.plan import plan_files, plan_tags
from medexp.tracking.store import get_or_create_experiment
from medexp.tracking.writer import unwatch_run, watch_run

log = logging.getLogger(__name__)

RECORD_FILE = "mlflow_sweep.json"
OBJECTIVE_METRIC = "sweep/objective"  # on each child: the value the sweep compared (the task's returned metric)
STATE_TAG = "sweep.state"  # on each child: COMPLETE | PRUNED | FAIL
TRIAL_TAG = "sweep.trial"  # on each child: Hydra's job number, which the Optuna sweeper makes the trial number
PARAM_TAG = "sweep.param."  # on each child: the value of each swept key, as given to Hydra
REPEAT_KEYS = {"seed", "data.fold"}  # sweeps over these repeat one experiment: their parent gets mean ± std
_RUN_STATUS = {COMPLETE: "FINISHED", PRUNED: "FINISHED", FAIL: "FAILED"}
RUNNING = "RUNNING"  # a child without an outcome yet: another worker of the same Optuna study is running it


@dataclass
class SweepRecord:
    """What a job needs to know about its sweep; written by the parent's creator into ``hydra.sweep.dir``."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    name: str
    kind: str  # grid | optuna
    keys: list[str]  # swept config keys, in command-line order
    metric: str | None
    maximize: bool
    started_ms: int  # this invocation's start: earlier children (a resumed study's) don't decide its status

    def save(self, sweep_dir: str | Path) -> None:
        path = Path(sweep_dir)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".{RECORD_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path / RECORD_FILE)  # atomic: a job never reads half a file

    @classmethod
    def load(cls, sweep_dir: str | Path) -> SweepRecord | None:
        path = Path(sweep_dir) / RECORD_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def mlflow_enabled(config: DictConfig) -> bool:
    return "mlflow" in (config.get("logger") or {})


def child_run_context() -> dict[str, Any] | None:
    """Parent id, run name and tags for this job's MLflow run, or None outside a sweep with MLflow on.

    The run name holds only the swept keys (``model=resnet18,optimizer.lr=3e-4``; Optuna: ``trial-3 lr=0.00031``).
    """
    hydra_cfg = _hydra_config()
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    record = SweepRecord.load(hydra_cfg.sweep.dir)
    if record is None:
        return None
    trial = int(hydra_cfg.job.num)
    values = swept_values(list(hydra_cfg.overrides.task), record.keys)
    tags = {
        "mlflow.parentRunId": record.parent_run_id,
        "sweep.name": record.name,
        "sweep.id": record.parent_run_id,
        TRIAL_TAG: str(trial),
        **{param_tag(key): value for key, value in values.items()},
    }
    return {"parent_run_id": record.parent_run_id, "run_name": run_name(record.kind, trial, values), "tags": tags}


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: the sweeper's ``params`` and command-line sweeps, less keys fixed on the command line."""
    overrides = _parse(list(config.hydra.overrides.task))
    fixed = {_key(o) for o in overrides if not o.is_sweep_override()}
    keys = [str(k) for k in search_params(config) if k not in fixed]
    return keys + [_key(o) for o in overrides if o.is_sweep_override() and _key(o) not in keys]


def search_space(config: DictConfig) -> dict[str, str]:
    """Each swept key's search, as written: the sweeper's ``params`` (``tag(log, interval(1e-4, 1e-1))``) or the
    command line's sweep (``cnn,resnet18``); the parent run's params."""
    params = search_params(config)
    given = {_key(o): o.input_line.split("=", 1)[1] for o in _parse(list(config.hydra.overrides.task))
             if o.is_sweep_override() and o.input_line and "=" in o.input_line}
    return {key: str(params[key]) if key in params else given.get(key, "") for key in swept_keys(config)}


def swept_values(job_overrides: list[str], keys: list[str]) -> dict[str, str]:
    """This job's value of each swept key, as written in its overrides, in the order of ``keys``."""
    given = {_key(o): o.get_value_element_as_str() for o in _parse(job_overrides)}
    return {key: given[key] for key in keys if key in given}


def run_name(kind: str, trial: int, values: dict[str, str]) -> str:
    if kind == "optuna":
        short = _short_keys(list(values))
        return f"trial-{trial} " + ",".join(f"{short[k]}={_compact(v)}" for k, v in values.items())
    return ",".join(f"{k}={_compact(v)}" for k, v in values.items()) or f"job-{trial}"


class MLflowSweepCallback(Callback):
    """Parent run of a sweep, per-job outcomes on the children, summary at the end. No-op when MLflow is off.

    Register it in ``conf/hydra/default.yaml`` under ``callbacks:``.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not mlflow_enabled(config):
            return
        from hydra.core.hydra_config import HydraConfig

        # Hydra sets HydraConfig per job only; tracking.uri and hydra.sweep.dir may need ${hydra:runtime.cwd} now
        HydraConfig.instance().set_config(config)
        record = open_parent_run(config)
        record.save(config.hydra.sweep.dir)
        _OPEN_SWEEPS[record.parent_run_id] = record
        watch_run(record.tracking_uri, record.parent_run_id)  # a SIGKILLed sweep's parent ends FAILED, not RUNNING
        # registered after the writer started: exit handlers run last-registered first, so an interrupted sweep
        # closes its parent itself before the writer would close it as abandoned (a wrong medexp.ended_by tag)
        atexit.unregister(close_unfinished_sweeps)
        atexit.register(close_unfinished_sweeps)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        hydra_cfg = _hydra_config()
        if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
            return
        record = SweepRecord.load(hydra_cfg.sweep.dir)
        if record is not None:
            record_job(record, int(hydra_cfg.job.num), job_return)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for run_id in list(_OPEN_SWEEPS):
            close_parent_run(_OPEN_SWEEPS.pop(run_id))


# Parents opened in this process and not closed yet. A multirun that ends in an exception skips on_multirun_end
# (Hydra's basic sweeper raises after a failed job, a signal stops a job): such parents are closed FAILED, with
# their summary, at exit (``close_unfinished_sweeps``, registered by ``on_multirun_start``).
_OPEN_SWEEPS: dict[str, SweepRecord] = {}


def close_unfinished_sweeps() -> None:
    for run_id in list(_OPEN_SWEEPS):
        record = _OPEN_SWEEPS.pop(run_id)
        try:
            close_parent_run(record, interrupted=True)
        except Exception as e:  # at exit, a store that is gone must not hide the sweep's own error
            log.warning("could not close sweep run %s: %s", run_id, e)


def open_parent_run(config: DictConfig) -> SweepRecord:
    """Create the parent run (or reopen an Optuna study's, to resume it) and return the record for the jobs.

    Creating the experiment here also creates/migrates a new sqlite store once, before parallel jobs open it.
    """
    from mlflow.entities import Param, RunTag

    from medexp.tracking.client import open_client

    uri = str(config.tracking.uri)
    quiet_libraries()  # the sweep's parent may be the first to open a new store
    bound_mlflow_http()
    client = open_client(uri)
    experiment_id = get_or_create_experiment(client, str(config.tracking.experiment), uri)
    kind, name, metric, maximize, tags = _describe(config)
    tags.update(owner_tags())  # this process: if it dies with the writer, the next run closes the parent
    if kind == "optuna":
        run_id = _study_parent(client, experiment_id, name, tags, str(config.hydra.sweeper.storage))
    else:
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    record = SweepRecord(uri, experiment_id, run_id, name, kind, swept_keys(config), metric, maximize,
                         started_ms=int(time.time() * 1000))
    tags = {**tags, "sweep.id": run_id, "sweep.keys": ",".join(record.keys), "sweep.dir": str(config.hydra.sweep.dir)}
    logged = client.get_run(run_id).data.params  # a resumed study's parent keeps the space it was started with
    space = [Param(k, v[:500]) for k, v in search_space(config).items() if k not in logged]
    client.log_batch(run_id, params=space, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    client.log_text(run_id, _sweep_yaml(config), "sweep/sweep.yaml")
    if plan_tags(config):  # a sweep over a planned experiment: its parent holds the plan it started from
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in plan_tags(config).items()])
        for path in plan_files(config):
            client.log_artifact(run_id, str(path), PLAN_ARTIFACTS)
    log.info("MLflow: sweep %s is parent run %s in %s", name, run_id, uri)
    return record


def record_job(record: SweepRecord, trial: int, job_return: Any) -> None:
    """Tag the job's child run with its outcome and objective; create the run if the job failed before making one."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(record.tracking_uri)
    outcome = job_outcome(job_return, record.metric or "")
    if record.kind != "optuna" and job_return.status == JobStatus.COMPLETED:
        outcome.state = COMPLETE  # a grid job that returns no objective still ran; Optuna would tell FAIL
    state = outcome.state
    run = _child_run(client, record, trial)
    if run is None:
        context = child_run_context()
        assert context is not None
        run_id = client.create_run(record.experiment_id, run_name=context["run_name"], tags=context["tags"]).info.run_id
        client.set_terminated(run_id, _RUN_STATUS[state])
    else:
        run_id = run.info.run_id
        if state == FAIL and run.info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED")
    tags = [RunTag(STATE_TAG, state)]
    if state == FAIL and outcome.error is not None:
        tags.append(RunTag("sweep.error", f"{type(outcome.error).__name__}: {outcome.error}"[:5000]))
    metrics = [] if outcome.value is None else [Metric(OBJECTIVE_METRIC, outcome.value, int(time.time() * 1000), 0)]
    client.log_batch(run_id, metrics=metrics, tags=tags)


def close_parent_run(record: SweepRecord, interrupted: bool = False) -> None:
    """Summarise the children on the parent (table, plot, best trial) and end it: FAILED if any job failed."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(record.tracking_uri)
    rows, columns = sweep_rows(client, record)
    columns = [c for c in columns if c != "started_ms"]
    objective = record.metric or OBJECTIVE_METRIC
    ranked = rank(rows, objective, record.maximize)
    table = to_markdown(ranked, [c for c in columns if c != "run_id"])
    complete = [r for r in rows if r["state"] == COMPLETE]
    # a mean over runs answers one question only when they differ by seed or fold, not by model or lr
    repeats = bool(record.keys) and set(record.keys) <= REPEAT_KEYS
    spread = mean_and_std(complete, [c for c in columns if c == objective or c.startswith("test")]) if repeats else {}
    if spread:
        table += "\n**Mean ± std over complete runs:**\n\n" + to_markdown(
            [{"metric": k, "mean ± std": f"{m:.4f} ± {s:.4f}", "runs": n} for k, (m, s, n) in spread.items()],
            ["metric", "mean ± std", "runs"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_csv(ranked, columns, out / "summary.csv")
        (out / "summary.md").write_text(f"# {record.name}\n\n{table}")
        plot_objective(rows, "trial", objective, "state", record.maximize, record.name, out / "objective.png")
        client.log_artifacts(record.parent_run_id, tmp, "summary")
        if spread:
            from medexp.reports.sweep_page import write_sweep_page

            page = write_sweep_page(complete, spread, out / "report", f"Sweep report: {record.name}",
                                    f"{len(complete)} complete run(s) over {', '.join(record.keys)}.")
            client.log_artifact(record.parent_run_id, str(page), "report")
    tags = [RunTag("mlflow.note.content", f"Sweep `{record.name}`: {len(rows)} run(s), ranked by {objective}\n\n{table}")]
    stamp = int(time.time() * 1000)
    metrics = [Metric(f"{stat}/{k}", v, stamp, 0) for k, (m, sd, _) in spread.items()
               for stat, v in (("mean", m), ("std", sd))]
    best = best_row(rows, objective, record.maximize, state="state")
    if best is not None:
        tags += [RunTag("best.run_id", best["run_id"]), RunTag("best.trial", str(best["trial"]))]
        tags += [RunTag(_tag_key(f"best.{k}"), str(best[k])) for k in record.keys if best.get(k) is not None]
        metrics.append(Metric(f"best/{objective}", best[objective], int(time.time() * 1000), 0))
        if not spread:  # the best run's test figures beside it (a fold or seed sweep reports their mean instead)
            metrics += [Metric(k, float(best[k]), stamp, 0) for k in columns if k.startswith("test") and is_number(best.get(k))]
        best_params = {k: yaml.safe_load(best[k]) if isinstance(best.get(k), str) else best.get(k) for k in record.keys}
        client.log_text(record.parent_run_id, OmegaConf.to_yaml({"trial": best["trial"], "run": best["run"],
                                                                 objective: best[objective], "params": best_params}),
                        "summary/best_params.yaml")
    client.log_batch(record.parent_run_id, metrics=metrics, tags=tags)
    shown = [c for c in columns if c not in ("run_id", "duration_s")]
    print(f"\nSweep {record.name}: {len(rows)} run(s), best first by {objective}\n{to_text(ranked, shown)}", flush=True)
    if spread:  # folds or seeds: their spread is the result; a "best" fold is nothing to carry forward
        print(f"Mean ± std over {', '.join(record.keys)}: "
              + ", ".join(f"{k} {m:.4f} ± {sd:.4f} ({n} runs)" for k, (m, sd, n) in spread.items()), flush=True)
    elif best is not None:
        print("Best: " + " ".join(f"{k}={fmt(best[k])}" for k in record.keys if best.get(k) is not None), flush=True)
    running = [r["trial"] for r in rows if r["state"] == RUNNING]
    if running and not interrupted:  # another worker of the study still runs these: the last one to end closes it
        unwatch_run(record.parent_run_id)
        log.info("MLflow: sweep %s summarised; trial(s) %s still run in another worker, which closes run %s",
                 record.name, running, record.parent_run_id)
        return
    failed = interrupted or any(r["state"] == FAIL and r["started_ms"] >= record.started_ms for r in rows)
    client.set_terminated(record.parent_run_id, "FAILED" if failed else "FINISHED")
    unwatch_run(record.parent_run_id)
    log.info("MLflow: sweep %s closed (%s), summary in run %s", record.name, "FAILED" if failed else "FINISHED",
             record.parent_run_id)


def sweep_rows(client: Any, record: SweepRecord) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per child run: trial, name, state, swept values, objective, test metrics, duration, run id.

    The objective is the value the job returned; for a pruned trial, the last value it logged (as Optuna does).
    """
    objective = record.metric or OBJECTIVE_METRIC
    rows = []
    for run in _children(client, record):
        tags, metrics = run.data.tags, run.data.metrics
        value = metrics.get(OBJECTIVE_METRIC)
        state = tags.get(STATE_TAG) or {"FINISHED": COMPLETE, "RUNNING": RUNNING}.get(run.info.status, FAIL)
        if value is None and state == PRUNED:
            value = metrics.get(objective)
        row = {"trial": int(tags.get(TRIAL_TAG, -1)), "run": run.info.run_name, "state": state}
        row.update({k: tags.get(param_tag(k)) for k in record.keys})
        row[objective] = value
        row.update({k: v for k, v in sorted(metrics.items()) if k.startswith("test")})
        end = run.info.end_time
        row["duration_s"] = round((end - run.info.start_time) / 1000, 1) if end else None
        row["run_id"] = run.info.run_id
        row["started_ms"] = run.info.start_time
        rows.append(row)
    rows.sort(key=lambda r: r["trial"])
    return rows, columns_of(rows) or ["trial", "run", "state", *record.keys, objective, "run_id"]


def _describe(config: DictConfig) -> tuple[str, str, str | None, bool, dict[str, str]]:
    """Kind, name, objective metric, direction and parent tags of the sweep this config starts."""
    sweeper = config.hydra.sweeper
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if sweeper.get("_target_") == OPTUNA_SWEEPER_TARGET:
        name = study_name(config)
        metric, maximize = str(sweeper.metric), str(sweeper.direction).startswith("max")
        tags = {"sweep.storage": redact_text(str(sweeper.storage)), "sweep.sampler": str(sweeper.sampler),
                "sweep.pruner": str(sweeper.pruner), "sweep.n_trials": str(sweeper.n_trials),
                "sweep.n_jobs": str(sweeper.n_jobs)}
        kind = "optuna"
    else:
        name = f"{config.get('name', 'sweep')}-{stamp}"
        metric = OmegaConf.select(config, "optimized_metric", default=None)
        maximize = str(OmegaConf.select(config, "task.monitor_mode", default="max")).startswith("max")
        tags, kind = {}, "grid"
    tags.update({"sweep.kind": kind, "sweep.name": name, "sweep.metric": str(metric),
                 "sweep.direction": "maximize" if maximize else "minimize", "sweep.seed": str(config.get("seed")),
                 "sweep.launcher": str(config.hydra.launcher.get("_target_", "")).rsplit(".", 1)[-1]})
    return kind, name, metric, maximize, tags


def _study_parent(client: Any, experiment_id: str, name: str, tags: dict[str, str], storage: str) -> str:
    """The Optuna study's one parent run: created by the study's first sweeper, reopened by every other one (started
    at once on other hosts, or later to resume it). Under the study's lock, so two sweepers never both create it."""
    from medexp.sweeps.workers import live_trials, study_lock

    with study_lock(storage, name):
        run_id = _open_study_parent(client, experiment_id, tags, live_trials(storage, name))
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    return run_id


def _open_study_parent(client: Any, experiment_id: str, tags: dict[str, str], live: set[int]) -> str | None:
    """The parent run of an earlier invocation of the same Optuna study, reopened; children of trials that are no
    longer running (their sweeper is gone) are failed, those of ``live`` trials (another worker's) left alone."""
    found = client.search_runs([experiment_id], max_results=1, filter_string=(
        f"tags.`sweep.kind` = 'optuna' and tags.`sweep.name` = '{tags['sweep.name']}' "
        f"and tags.`sweep.storage` = '{tags['sweep.storage']}'"))
    if not found:
        return None
    run_id = found[0].info.run_id
    reopen_run(client, run_id)  # owned by this sweeper now, and no longer "ended by" the last one's end
    for child in client.search_runs([experiment_id], max_results=10000, filter_string=(
            f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'")):
        if int(child.data.tags.get(TRIAL_TAG, -1)) in live:
            continue
        client.set_tag(child.info.run_id, STATE_TAG, FAIL)
        client.set_tag(child.info.run_id, "sweep.error", "interrupted: the sweep was stopped while it ran")
        client.set_terminated(child.info.run_id, "FAILED")
    return run_id


def _children(client: Any, record: SweepRecord) -> list:
    return list(client.search_runs([record.experiment_id], max_results=50000,
                                   filter_string=f"tags.mlflow.parentRunId = '{record.parent_run_id}'"))


def _child_run(client: Any, record: SweepRecord, trial: int):
    found = client.search_runs([record.experiment_id], max_results=1, filter_string=(
        f"tags.mlflow.parentRunId = '{record.parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial}'"))
    return found[0] if found else None


def _sweep_yaml(config: DictConfig) -> str:
    """The sweep's command line, sweeper and launcher settings, and the composed (unresolved) job config."""
    try:
        sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
    except Exception:  # an interpolation only a job can resolve
        sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=False)
    job_config = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    doc = {"overrides": list(config.hydra.overrides.task), "sweeper": sweeper,
           "launcher": OmegaConf.to_container(config.hydra.launcher, resolve=False),
           "config": OmegaConf.to_container(job_config, resolve=False)}
    return redact_text(OmegaConf.to_yaml(OmegaConf.create(doc)))


def _hydra_config():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _parse(overrides: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def _key(override: Any) -> str:
    return override.get_key_element().lstrip("+~")


def param_tag(key: str) -> str:
    """The child-run tag holding the value of swept key ``key``."""
    return _tag_key(PARAM_TAG + key)


def _tag_key(key: str) -> str:
    """MLflow tag keys allow letters, digits, ``_ - . / `` and spaces."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def _short_keys(keys: list[str]) -> dict[str, str]:
    """``optimizer.lr`` -> ``lr`` unless two keys share their last part."""
    lasts = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: last if lasts.count(last) == 1 else k for k, last in zip(keys, lasts, strict=True)}


def _compact(value: str) -> str:
    """Numbers short for a readable run name (3e-4, 0.25, 64); the exact value is in the run's tags and params."""
    try:
        number = float(value)
    except ValueError:
        return value
    if not math.isfinite(number) or (number.is_integer() and not any(c in value for c in ".eE")):
        return value
    if number != 0 and (abs(number) < 1e-2 or abs(number) >= 1e4):
        mantissa, exponent = f"{number:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{number:.3g}"
