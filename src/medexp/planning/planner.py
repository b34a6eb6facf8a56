"""``medexp-plan``'s work: fingerprint the data, check the split for leaks, choose the planned image size that the
budget can train long enough, time the plan on this machine and write it as a Hydra experiment."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medexp.errors import ConfigError, DataError
from medexp.planning import rules
from medexp.planning.budget import Schedule, Throughput, fastest_threads, probe, schedule
from medexp.planning.rules import Plan, Planned

DEVICES = ("cpu", "gpu")
MAX_EPOCH_HEADROOM = 1.5  # max_epochs above the predicted count: a faster run fills the budget, the time stops it


@dataclass(frozen=True)
class PlanResult:
    experiment: Path
    name: str
    fingerprint: dict[str, Any]
    plan: Plan
    schedule: Schedule


def plan_experiment(data: Mapping[str, Any], budget: str | float, device: str, output: str | Path,
                    name: str | None = None, allow_leaks: bool = False, cache_dir: str | Path | None = None,
                    ) -> PlanResult:
    """Plan and write the experiment for the dataset ``data`` (a resolved data config as a plain dict)."""
    from medexp.callbacks.budget import parse_duration
    from medexp.planning.fingerprint import fingerprint_data
    from medexp.planning.writer import experiment_name, write_plan

    if device not in DEVICES:
        raise ConfigError(f"device={device!r} is unknown: use one of {list(DEVICES)}")
    budget_s = parse_duration(budget)
    fp = fingerprint_data(data, cache_dir=cache_dir)
    check_leakage(fp["leakage"], allow_leaks)
    plan, timing, speed = choose_size(fp, budget_s, device, os.cpu_count() or 1)
    plan.update(training_schedule(budget, timing, speed))
    name = name or experiment_name(data)
    groups = {
        "data": (name, "the data config planned from, copied beside this file"),
        "task": ("segmentation", f"{fp['task']} data"),
        "model": ("dynunet", "nnU-Net's U-Net, depth and strides below"),
        "augmentation": ("none", "the planned recipe below, on top of nothing"),
        "optimizer": ("adamw", "see optimizer.lr"),
        "scheduler": ("none", "trainer.budget runs a cosine over the budget"),
    }
    header = [
        f"Planned by medexp-plan for {fp['dataset']} ({fp['n_cases']} cases: {fp['cases_per_split']}; fingerprint "
        f"{fp['digest']}), budget {budget} on a {device}.",
        f"Throughput probed here: {speed.step_s:.3g} s per step of {speed.batch} at {list(speed.size)}; epoch ~"
        f"{timing.epoch_s:.0f} s, start-up and loading ~{timing.setup_s:.0f} s, test ~{timing.test_s:.0f} s.",
        "Each value's comment names the fingerprint figure that chose it (docs/planning.md lists the rules).",
        f"  medexp-train --config-dir {Path(output).resolve()} experiment={name}",
    ]
    leaks = leak_summary(fp["leakage"])
    if leaks:
        header.append(f"Leakage: {leaks}")
    experiment = write_plan(output, name, data, groups, plan, fp, header)
    return PlanResult(experiment, name, fp, plan, timing)


def check_leakage(report: Mapping[str, Any], allow_leaks: bool) -> None:
    """Patients in two splits: refused in one line naming them (``allow_leaks=true`` plans anyway). Near-duplicate
    images across splits are only reported: look-alike images of different patients happen."""
    patients = report["patients_in_two_splits"]
    if patients and not allow_leaks:
        raise DataError(f"the split leaks: patients {patients[:5]} ({len(patients)} in all) have cases in two splits: "
                        "give the datalist a patient_regex or patient_id column, or plan anyway with allow_leaks=true")


def leak_summary(report: Mapping[str, Any]) -> str:
    parts = []
    if report["patients_in_two_splits"]:
        parts.append(f"patients in two splits: {report['patients_in_two_splits'][:5]}")
    pairs = report["near_duplicates_across_splits"]
    if pairs:
        parts.append(f"{len(pairs)} near-duplicate image pair(s) across splits, e.g. {pairs[:3]}")
    return "; ".join(parts)


def choose_size(fp: Mapping[str, Any], budget_s: float, device: str, cores: int) -> tuple[Plan, Schedule, Throughput]:
    """The largest planned size above the resolution floor whose predicted epochs reach rules.MIN_EPOCHS; when none
    does at the device's width, the same search at half the width (down to rules.MIN_BASE_FEATURES); when none
    does at all, the floor size at the narrowest width. Predictions scale one probe per width (at the smallest size)
    by voxels; the chosen plan is probed again for its schedule."""
    dims = int(fp["spatial_dims"])
    if dims == 2:
        floor = rules.resolution_floor(fp)
        sizes = rules.candidate_sizes(fp, floor.value)
    else:
        floor = Planned(1.0, "3D: resampled to the target spacing")
        sizes = [resampled_shape(fp)]
    cases = fp["cases_per_split"]
    read_s = float(fp.get("seconds", 0.0))
    num_classes = len(fp["classes"]["voxel_fraction"])

    def measured(size, base) -> tuple[Plan, Throughput]:
        plan = rules.segmentation_plan(fp, size, device, cores, base)
        return plan, probe(plan, fp["channels"], num_classes, dims, device, size)

    smallest = rules.segmentation_plan(fp, sizes[-1], device, cores)
    if device == "cpu":  # threads first: every later probe runs with the faster setting
        threads, _ = fastest_threads(smallest, fp["channels"], num_classes, dims, sizes[-1], cores)
    else:
        threads = Planned(None, "a GPU: torch's default")
    widths = [w for w in (rules.BASE_FEATURES[device], rules.BASE_FEATURES[device] // 2)
              if w >= rules.MIN_BASE_FEATURES]
    chosen = (sizes[-1], widths[-1])
    for base in widths:
        _, speed = measured(sizes[-1], base)
        fitting = [size for size in sizes if _predicted_epochs(fp, size, base, speed, budget_s, device, cores)
                   >= rules.MIN_EPOCHS]
        if fitting:
            chosen = (fitting[0], base)
            break
    plan, speed = measured(*chosen)
    plan["threads"] = threads
    timing = schedule(budget_s, speed, cases, read_s)
    if dims == 2:
        key = "data.preprocessing.resize"
        why = (f"the largest of {sizes} (floor x{floor.value}: {floor.reason}) whose ~{timing.epochs} epochs reach "
               f"{rules.MIN_EPOCHS} in the budget" if timing.epochs >= rules.MIN_EPOCHS
               else f"the smallest the floor allows ({floor.reason}): ~{timing.epochs} epochs in the budget")
        plan[key] = Planned(plan[key].value, f"{plan[key].reason}; {why}")
    return plan, timing, speed


def _predicted_epochs(fp: Mapping[str, Any], size, base: int, speed: Throughput, budget_s: float, device: str,
                      cores: int) -> int:
    candidate = rules.segmentation_plan(fp, size, device, cores, base)
    guess = speed.scaled(candidate["data.patch_size"].value or size, candidate["data.batch_size"].value)
    return schedule(budget_s, guess, fp["cases_per_split"], float(fp.get("seconds", 0.0))).epochs


def resampled_shape(fp: Mapping[str, Any]) -> list[int]:
    """The median shape at the planned target spacing (3D)."""
    target = rules.target_spacing(fp).value
    shape = [s * m / t for s, m, t in zip(fp["shape"]["median"], fp["spacing"]["median"], target, strict=True)]
    return rules.divisible_shape(shape, target)


def training_schedule(budget: str | float, timing: Schedule, speed: Throughput) -> Plan:
    epochs = math.ceil(timing.epochs * MAX_EPOCH_HEADROOM)
    return {
        "trainer.budget": Planned(budget, "the whole run (loading, training, test) ends within it; the learning "
                                          "rate follows a cosine over it"),
        "trainer.max_epochs": Planned(epochs, f"~{timing.epochs} epochs of ~{timing.epoch_s:.0f} s fit (probe: "
                                              f"{speed.step_s:.3g} s/step); x{MAX_EPOCH_HEADROOM} headroom, the "
                                              "budget stops the run on time"),
        "trainer.check_val_every_n_epoch": Planned(timing.val_every, "validation within a fifth of an epoch's time"),
        "trainer.log_every_n_steps": Planned(10, "a few loss points per epoch"),
    }
