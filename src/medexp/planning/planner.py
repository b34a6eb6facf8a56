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
from medexp.planning.budget import Schedule, Throughput, faster_precision, fastest_threads, probe, schedule
from medexp.planning.rules import Plan, Planned
from medexp.planning.search import search_space

DEVICES = ("cpu", "gpu")
MAX_EPOCH_HEADROOM = 1.5  # max_epochs above the predicted count: a faster run fills the budget, the time stops it


@dataclass(frozen=True)
class PlanResult:
    experiment: Path
    name: str
    fingerprint: dict[str, Any]
    plan: Plan
    schedule: Schedule


def fingerprint_data(data: Mapping[str, Any], cache_dir: str | Path | None = None, workers: int | None = None,
                     ) -> dict[str, Any]:
    """The fingerprint of the dataset a resolved data config describes, cached by its digest: segmentation's
    (``fingerprint``) or classification's and detection's (``image_fingerprint``)."""
    from medexp.planning.fingerprint import fingerprint_segmentation, task_kind
    from medexp.planning.image_fingerprint import fingerprint_images

    kind = task_kind(str(data.get("_target_", "")))
    if kind == "segmentation":
        return fingerprint_segmentation(data, cache_dir, workers)
    return fingerprint_images(data, kind, cache_dir, workers)


def plan_experiment(data: Mapping[str, Any], budget: str | float, device: str, output: str | Path,
                    name: str | None = None, allow_leaks: bool = False, cache_dir: str | Path | None = None,
                    ) -> PlanResult:
    """Plan and write the experiment for the dataset ``data`` (a resolved data config as a plain dict)."""
    from medexp.callbacks.budget import parse_duration
    from medexp.planning.writer import experiment_name, write_plan

    if device not in DEVICES:
        raise ConfigError(f"device={device!r} is unknown: use one of {list(DEVICES)}")
    budget_s = parse_duration(budget)
    fp = fingerprint_data(data, cache_dir=cache_dir)
    check_leakage(fp["leakage"], allow_leaks)
    choose = {"segmentation": choose_size, "classification": choose_classification,
              "detection": choose_detection}[fp["task"]]
    plan, timing, speed = choose(fp, budget_s, device, os.cpu_count() or 1)
    plan.update(training_schedule(budget, timing, speed))
    plan.update(evaluation(fp))
    name = name or experiment_name(data)
    groups = {"data": (name, "the data config planned from, copied beside this file"), **task_groups(fp)}
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
    experiment = write_plan(output, name, data, groups, plan, fp, header, search_space(fp, plan))
    return PlanResult(experiment, name, fp, plan, timing)


def task_groups(fp: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """The config groups a plan chooses for its task (each with why); the planned values go on top of them."""
    recipe = ("none", "the planned recipe below, on top of nothing")
    common = {"augmentation": recipe, "optimizer": ("adamw", "see optimizer.lr"),
              "scheduler": ("none", "trainer.budget runs a cosine over the budget")}
    if fp["task"] == "classification":
        multi = fp["labels"]["multi_label"]
        return {"task": ("classification_multilabel" if multi else "classification",
                         "several 0/1 labels per image" if multi else "one class per image"),
                "model": ("resnet10", f"a MONAI ResNet ({fp['spatial_dims']}D), stem and widths below"), **common}
    if fp["task"] == "detection":
        return {"task": ("detection", "boxes per image"),
                "model": ("retinanet", "MONAI's RetinaNet, pyramid and anchors below"), **common}
    return {"task": ("segmentation", f"{fp['task']} data"),
            "model": ("dynunet", "nnU-Net's U-Net, depth and strides below"), **common}


def plan_summary(fp: Mapping[str, Any], plan: Plan) -> str:
    """The planned values a user checks first, in one line."""
    values = {key: planned.value for key, planned in plan.items()}
    keys = {"segmentation": ("data.preprocessing.resize", "data.preprocessing.spacing", "data.patch_size",
                             "model.filters"),
            "classification": ("data.preprocessing.size", "model.layers", "model.block_inplanes",
                               "model.conv1_t_stride", "task.class_weights"),
            "detection": ("data.preprocessing.resize", "model.returned_layers", "model.anchor_sizes",
                          "task.nms_thresh")}[fp["task"]]
    shown = [f"{key.rsplit('.', 1)[-1]} {values[key]}" for key in keys if key in values]
    shown += [f"batch {values['data.batch_size']}", f"mirror axes {values['augmentation.flip_axes']}"]
    return ", ".join(shown)


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
    """The largest planned size above the resolution floor, with the largest patch, that the budget trains long
    enough (``fits``); sizes are tried largest first and, at each, patches from the whole-image rule's down to
    ``rules.patch_limits``. When nothing fits at the device's width, the same search at half the width (down to
    rules.MIN_BASE_FEATURES); when nothing fits at all, the floor size, smallest patch and narrowest width.
    Predictions scale one probe per width (at the smallest size) by voxels; the chosen plan is probed again for its
    schedule. Every probe runs at the planned precision (``faster_precision``)."""
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

    smallest = rules.segmentation_plan(fp, sizes[-1], device, cores)
    threads = planned_threads(device, lambda: probe(smallest, fp["channels"], num_classes, dims, device, sizes[-1]),
                              cores)
    precision = faster_precision(lambda p: probe(smallest, fp["channels"], num_classes, dims, device, sizes[-1], p))

    def measured(size, limit, base) -> tuple[Plan, Throughput]:
        plan = rules.segmentation_plan(fp, size, device, cores, base, limit)
        return plan, probe(plan, fp["channels"], num_classes, dims, device, size, precision.value)

    widths = [w for w in (rules.BASE_FEATURES[device], rules.BASE_FEATURES[device] // 2)
              if w >= rules.MIN_BASE_FEATURES]
    chosen = (sizes[-1], rules.patch_limits(fp, sizes[-1])[-1], widths[-1])
    for base in widths:
        _, speed = measured(sizes[-1], None, base)
        fitting = [(size, limit) for size in sizes for limit in rules.patch_limits(fp, size)
                   if fits(predicted_schedule(fp, size, limit, base, speed, budget_s, device, cores))]
        if fitting:
            chosen = (*fitting[0], base)
            break
    plan, speed = measured(*chosen)
    plan["threads"] = threads
    plan["data.cache"] = rules.case_cache(fp, chosen[0], machine_memory_bytes())
    plan["trainer.precision"] = precision
    timing = schedule(budget_s, speed, cases, read_s)
    steps = optimiser_steps(timing, cases, plan["data.batch_size"].value)
    if dims == 2:
        key = "data.preprocessing.resize"
        why = (f"the largest of {sizes} (floor x{floor.value}: {floor.reason}) whose ~{timing.epochs} epochs "
               f"(~{steps} steps) reach {rules.MIN_EPOCHS} epochs and {rules.MIN_STEPS} steps in the budget"
               if fits((timing, steps)) else f"the smallest the floor allows ({floor.reason}): ~{timing.epochs} epochs "
                                             f"(~{steps} steps) in the budget")
        plan[key] = Planned(plan[key].value, f"{plan[key].reason}; {why}")
    return plan, timing, speed


def fits(predicted: tuple[Schedule, int]) -> bool:
    """A plan the budget trains long enough: rules.MIN_EPOCHS passes over the data and rules.MIN_STEPS updates."""
    timing, steps = predicted
    return timing.epochs >= rules.MIN_EPOCHS and steps >= rules.MIN_STEPS


def predicted_schedule(fp: Mapping[str, Any], size, limit: int | None, base: int, speed: Throughput,
                       budget_s: float, device: str, cores: int) -> tuple[Schedule, int]:
    """The schedule and optimiser steps of a candidate plan, from a probe of another one scaled by voxels."""
    candidate = rules.segmentation_plan(fp, size, device, cores, base, limit)
    batch = candidate["data.batch_size"].value
    guess = speed.scaled(candidate["data.patch_size"].value or size, batch, size)
    timing = schedule(budget_s, guess, fp["cases_per_split"], float(fp.get("seconds", 0.0)))
    return timing, optimiser_steps(timing, fp["cases_per_split"], batch)


def optimiser_steps(timing: Schedule, cases: Mapping[str, int], batch: int) -> int:
    """Updates a schedule holds: its epochs times the batches of training images in one."""
    return timing.epochs * math.ceil(cases["train"] / batch)


def machine_memory_bytes() -> float:
    """This machine's physical memory (what the planned data path must fit in)."""
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def resampled_shape(fp: Mapping[str, Any]) -> list[int]:
    """The median shape at the planned target spacing (3D), rounded up to what the pooling divides: the median case
    fits a patch of it whole (Hippocampus: 35x50x36 -> 40x56x40, nnU-Net's patch)."""
    target = rules.target_spacing(fp).value
    shape = [s * m / t for s, m, t in zip(fp["shape"]["median"], fp["spacing"]["median"], target, strict=True)]
    return rules.divisible_shape(shape, target, up=True)


def evaluation(fp: Mapping[str, Any]) -> Plan:
    """A dataset without test cases (MSD's Hippocampus folds: the official test labels are not public) is scored on
    its validation split, as its recipe does; a run would otherwise stop before training, asking for test=false."""
    if fp["cases_per_split"].get("test"):
        return {}
    return {"test": Planned(False, "no test cases: the validation split scores the chosen checkpoint")}


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


def planned_threads(device: str, measure, cores: int) -> Planned:
    """On a CPU, the faster thread count in the probe (every later probe runs with it); a GPU keeps torch's."""
    if device != "cpu":
        return Planned(None, "a GPU: torch's default")
    return fastest_threads(measure, cores)[0]


def choose_by_epochs(sizes: list, plan_at, measure, budget_s: float, fp: Mapping[str, Any], min_epochs: int,
                     ) -> tuple[Plan, Schedule, Throughput]:
    """The largest of ``sizes`` (largest first) whose predicted epochs reach ``min_epochs``, else the smallest:
    one probe at the smallest size predicts the others in proportion to their voxels and batch; the chosen plan
    is probed again for its schedule."""
    cases, read_s = fp["cases_per_split"], float(fp.get("seconds", 0.0))
    base = measure(plan_at(sizes[-1]), sizes[-1])
    chosen = sizes[-1]
    for size in sizes[:-1]:  # the smallest is where the search ends anyway
        plan = plan_at(size)
        guess = base.scaled(size, plan["data.batch_size"].value)
        if schedule(budget_s, guess, cases, read_s).epochs >= min_epochs:
            chosen = size
            break
    plan = plan_at(chosen)
    speed = measure(plan, chosen) if chosen != sizes[-1] else base
    return plan, schedule(budget_s, speed, cases, read_s), speed


def choose_classification(fp: Mapping[str, Any], budget_s: float, device: str, cores: int,
                          ) -> tuple[Plan, Schedule, Throughput]:
    """Image files: the largest size whose epochs reach MIN_CLASSIFICATION_EPOCHS; arrays (MedMNIST) and volumes
    keep their stored size."""
    from medexp.planning import image_rules
    from medexp.planning.budget import probe_classification

    dims, labels = int(fp["spatial_dims"]), fp["labels"]
    stored = [int(s) for s in fp["shape"]["median"]]
    sizes = image_rules.classification_sizes(fp) or [None]

    def plan_at(size):
        return image_rules.classification_plan(fp, size, device, cores)

    def measure(plan, size):
        return probe_classification(plan, fp["channels"], labels["num_classes"], dims, device, size or stored)

    threads = planned_threads(device, lambda: measure(plan_at(sizes[-1]), sizes[-1]), cores)
    plan, timing, speed = choose_by_epochs(sizes, plan_at, measure, budget_s, fp,
                                           image_rules.MIN_CLASSIFICATION_EPOCHS)
    plan["threads"] = threads
    key = "data.preprocessing.size"
    if key in plan and plan[key].value is not None and len(sizes) > 1:
        plan[key] = Planned(plan[key].value, f"{plan[key].reason}; the largest of {sizes} whose ~{timing.epochs} "
                                             f"epochs reach {image_rules.MIN_CLASSIFICATION_EPOCHS} in the budget"
                            if timing.epochs >= image_rules.MIN_CLASSIFICATION_EPOCHS else
                            f"{plan[key].reason}; the smallest candidate: ~{timing.epochs} epochs in the budget")
    return plan, timing, speed


def choose_detection(fp: Mapping[str, Any], budget_s: float, device: str, cores: int,
                     ) -> tuple[Plan, Schedule, Throughput]:
    """The largest size above the box floor whose epochs reach MIN_DETECTION_EPOCHS."""
    from medexp.planning import image_rules
    from medexp.planning.budget import probe_detection

    if int(fp["spatial_dims"]) != 2:
        raise ConfigError("medexp-plan plans 2D detection so far: train 3D detection with a recipe "
                          "(conf/experiment/synthetic_detection.yaml shows one)")
    if not fp["boxes"]["n"]:
        raise DataError("the detection data holds no boxes: check data.datalist and data.class_names")
    floor = image_rules.detection_floor(fp)
    sizes = image_rules.detection_sizes(fp, floor.value)
    boxes = max(1, math.ceil(fp["boxes"]["per_image"]["median"]))

    def plan_at(size):
        return image_rules.detection_plan(fp, size, device, cores)

    def measure(plan, size):
        return probe_detection(plan, fp["channels"], fp["labels"]["num_classes"], 2, device, size, boxes)

    threads = planned_threads(device, lambda: measure(plan_at(sizes[-1]), sizes[-1]), cores)
    plan, timing, speed = choose_by_epochs(sizes, plan_at, measure, budget_s, fp, image_rules.MIN_DETECTION_EPOCHS)
    plan["threads"] = threads
    key = "data.preprocessing.resize"
    plan[key] = Planned(plan[key].value, f"{plan[key].reason}; the largest of {sizes} (floor x{floor.value}: "
                                         f"{floor.reason}) whose ~{timing.epochs} epochs reach "
                                         f"{image_rules.MIN_DETECTION_EPOCHS}" if timing.epochs >=
                        image_rules.MIN_DETECTION_EPOCHS else f"{plan[key].reason}; the smallest the floor allows "
                                                               f"({floor.reason}): ~{timing.epochs} epochs")
    return plan, timing, speed
