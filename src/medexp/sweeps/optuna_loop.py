"""The Optuna sweep loop: ask a batch of ``n_jobs`` trials, launch them through Hydra's launcher, tell the results.

Each trial's job gets the sampled overrides plus ``seed=<derived>`` and ``optuna_trial=<number>``, and its job
number is the trial number, so output folders never collide across resumed runs of the same study. A job that
raises ``optuna.TrialPruned`` is told PRUNED; any other failure is told FAIL and the sweep goes on.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from medexp.redact import redact_text
from medexp.sweeps import planned_values, search_params, study_name, workers
from medexp.sweeps import study as studies
from medexp.sweeps.outcome import COMPLETE, FAIL, PRUNED, JobOutcome, job_outcome
from medexp.sweeps.seeds import sampler_seed, trial_seed
from medexp.sweeps.space import choice_value, override_value, search_space
from medexp.sweeps.summary import fmt

log = logging.getLogger(__name__)

# keys the sweeper sets per trial; a user's value for them is the sweep's, not a trial's
_PER_TRIAL_KEYS = ("seed", "optuna_trial")


class OptunaSweep:
    """One invocation of a (possibly resumed) study: runs trials until the study holds ``n_trials`` counted ones."""

    def __init__(self, settings: Mapping[str, Any], config: DictConfig, launcher: Launcher,
                 validate_batch: Callable[[Sequence[Sequence[str]]], None]) -> None:
        self.settings = settings
        self.config = config
        self.launcher = launcher
        self.validate_batch = validate_batch
        self.metric = str(settings["metric"])
        self.sweep_seed = int(config.seed)

    def run(self, arguments: list[str]) -> optuna.Study:
        s = self.settings
        fixed, space = search_space(search_params(self.config), arguments)
        fixed = [line for line in fixed if line.split("=", 1)[0].lstrip("+~") not in _PER_TRIAL_KEYS]
        name = self._name_the_study()
        with workers.study_lock(s["storage"], name):
            study = studies.open_study(name, s["storage"], s["direction"], sampler=None,
                                       pruner=studies.build_pruner(s["pruner"], s["pruner_kwargs"]))
            studies.check_signature(study, studies.signature(self.config, self.metric, space, fixed),
                                    explicit=bool(s.get("study_name")))
            workers.reap_stale_trials(study)
            if not study.trials:
                self._start_from_the_plan(study, space)
            counted = studies.n_counted_trials(study)
            study.sampler = self._sampler(study, space)
        # this invocation's share: what the study misses now (a failed trial is not redone in the same invocation);
        # other workers on the study may take some of it, claims decide
        budget = max(int(s["n_trials"]) - counted, 0)
        log.info("study %s (%s): %d trial(s) counted, %d to run to reach n_trials=%d, %d at a time",
                 study.study_name, redact_text(str(s["storage"])), counted, budget, int(s["n_trials"]), int(s["n_jobs"]))
        self._save_sweep_config()
        outcomes: list[JobOutcome] = []
        self._validated = False
        with workers.Heartbeat(study) as heartbeat:
            while budget > 0:
                batch = self._claim(study, space, min(int(s["n_jobs"]), budget))
                if not batch:
                    break
                with heartbeat.tracking(batch):
                    outcomes += self._run_batch(study, batch, fixed)
                budget -= len(batch)
        self._report(study, outcomes)
        return study

    def _start_from_the_plan(self, study: optuna.Study, space: dict[str, BaseDistribution]) -> None:
        """On a planned experiment, the plan's own values are the new study's first trial (``enqueue_trial``): the
        sweep then never reports worse than the plan."""
        if not OmegaConf.select(self.config, "plan.search", default=None):
            return
        values = {key: choice_value(value) for key, value in planned_values(self.config, space).items()}
        first = {key: value for key, value in values.items() if _holds(space[key], value)}
        if first:
            study.enqueue_trial(first, user_attrs={"medexp.origin": "plan"})
            log.info("study %s: trial 0 is the plan (%s)", study.study_name,
                     ", ".join(f"{k}={fmt(v)}" for k, v in first.items()))

    def _claim(self, study: optuna.Study, space: dict[str, BaseDistribution], n: int) -> list[optuna.Trial]:
        """Up to ``n`` new trials, as many as the study still misses counting other workers' running ones."""
        s = self.settings
        with workers.study_lock(s["storage"], study.study_name):
            n = min(n, int(s["n_trials"]) - workers.n_claimed_trials(study))
            if not isinstance(study.sampler, optuna.samplers.GridSampler):  # its seed orders the grid: keep it
                study.sampler = self._sampler(study, space)  # a worker that started beside another one diverges
            batch = self._ask(study, space, n)
            for trial in batch:
                workers.claim(study, trial)
        return batch

    def _sampler(self, study: optuna.Study, space: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
        """Seeded by the study's trial count: reproducible, and a resumed study does not replay its first trials."""
        s = self.settings
        return studies.build_sampler(s["sampler"], s["sampler_kwargs"],
                                     sampler_seed(self.sweep_seed, len(study.trials)), space)

    def _name_the_study(self) -> str:
        """The study's name (given, or derived from the sweep), also passed to every job: its pruning callback
        reports to that study."""
        name = study_name(self.config)
        node = self.config.hydra.overrides
        with read_write(node), open_dict(node):  # Hydra keeps its own section read-only
            node.hydra = [*(o for o in node.hydra if not o.startswith("hydra.sweeper.study_name=")),
                          f"hydra.sweeper.study_name={name}"]
        return name

    def _ask(self, study: optuna.Study, space: dict[str, BaseDistribution], n: int) -> list[optuna.Trial]:
        batch = []
        for _ in range(n):
            if self._grid_exhausted(study):
                break
            batch.append(study.ask(space))
        return batch

    def _run_batch(self, study: optuna.Study, batch: list[optuna.Trial], fixed: list[str]) -> list[JobOutcome]:
        overrides = [self.trial_overrides(trial, fixed) for trial in batch]
        try:
            if not self._validated:  # later batches differ in values only; a bad one fails its trial
                self.validate_batch(overrides)
                self._validated = True
            returns = self.launcher.launch(overrides, initial_job_idx=batch[0].number)
        except BaseException:
            for trial in batch:  # Ctrl-C or a config that does not compose: these trials did not run
                study.tell(trial, state=TrialState.FAIL)
            raise
        return [self._tell(study, trial, job) for trial, job in zip(batch, returns, strict=True)]

    def trial_overrides(self, trial: optuna.Trial, fixed: list[str]) -> list[str]:
        """The job's command line: fixed overrides, the sampled values, the trial's seed and number."""
        sampled = [f"{key}={override_value(value)}" for key, value in trial.params.items()]
        per_trial = [f"optuna_trial={trial.number}"]
        if "seed" not in trial.params:
            per_trial.insert(0, f"seed={trial_seed(self.sweep_seed, trial.number)}")
        return [*fixed, *sampled, *per_trial]

    def _tell(self, study: optuna.Study, trial: optuna.Trial, job: JobReturn) -> JobOutcome:
        outcome = job_outcome(job, self.metric)
        if outcome.state == FAIL:
            log.warning("trial %d failed: %s: %s", trial.number, type(outcome.error).__name__, outcome.error)
        study.tell(trial, outcome.value, state=TrialState[outcome.state])
        value = "" if outcome.value is None else f" {self.metric}={outcome.value:.4g}"
        print(f"trial {trial.number} {outcome.state}{value} "
              f"({', '.join(f'{k}={fmt(v)}' for k, v in trial.params.items())})", flush=True)
        return outcome

    def _report(self, study: optuna.Study, outcomes: list[JobOutcome]) -> None:
        counts = {state: sum(o.state == state for o in outcomes) for state in (COMPLETE, PRUNED, FAIL)}
        log.info("study %s: ran %d trial(s) now (%d complete, %d pruned, %d failed)", study.study_name, len(outcomes),
                 counts[COMPLETE], counts[PRUNED], counts[FAIL])
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if completed:
            best = study.best_trial
            log.info("best trial %d: %s=%.4g with %s", best.number, self.metric, best.value,
                     " ".join(f"{k}={fmt(v)}" for k, v in best.params.items()))
            results = {"study_name": study.study_name, "metric": self.metric, "best_trial": best.number,
                       "best_value": best.value, "best_params": best.params}
            OmegaConf.save(OmegaConf.create(results), self._sweep_dir() / "optimization_results.yaml")
        if outcomes and counts[FAIL] == len(outcomes):
            raise RuntimeError(f"all {len(outcomes)} trial(s) of study {study.study_name} failed; "
                               f"the first: {outcomes[0].error!r}") from outcomes[0].error

    def _grid_exhausted(self, study: optuna.Study) -> bool:
        sampler = study.sampler
        return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)

    def _sweep_dir(self) -> Path:
        path = Path(str(self.config.hydra.sweep.dir))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _save_sweep_config(self) -> None:
        OmegaConf.save(self.config, self._sweep_dir() / "multirun.yaml")



def _holds(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` lies in ``distribution`` (a command-line space may not hold the plan's value)."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False
