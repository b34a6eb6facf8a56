"""How the planner picks a segmentation size and patch for a budget (the probe replaced by a fixed throughput)."""
from medexp.planning import planner, rules
from medexp.planning.budget import Throughput
from tests.unit.planning.test_rules import fingerprint


def vessels(train: int = 16) -> dict:
    """Few large photographs of thin structures: full resolution, patches."""
    shape = {"median": [960.0, 1000.0], "min": [960.0, 1000.0], "max": [960.0, 1000.0], "one_shape": True}
    return fingerprint(shape=shape, cases_per_split={"train": train, "val": 4, "test": 8}, channels=3,
                       structures={"half_thickness_voxels": {"p05": 3.0, "p95": 4.0},
                                   "foreground_fraction": {"median": 0.07}})


def test_a_plan_fits_when_the_budget_holds_enough_epochs_and_steps():
    timing = planner.schedule(1200, Throughput(0.1, 0.0, 0.1, 8, (128, 128)), {"train": 16, "val": 4, "test": 8}, 1)
    assert planner.fits((timing, rules.MIN_STEPS)) and not planner.fits((timing, rules.MIN_STEPS - 1))


def test_the_smallest_patch_gives_the_most_steps_in_the_same_budget():
    fp = vessels()
    speed = Throughput(step_s=6.0, augment_s=0.0, infer_s=2.0, batch=3, size=(512, 480), image=(992, 1024))
    limits = rules.patch_limits(fp, [992, 1024])
    steps = [planner.predicted_schedule(fp, [992, 1024], limit, 16, speed, 1200, "cpu", 2)[1] for limit in limits]
    assert steps[-1] == max(steps) > 4 * steps[0]  # the batch grows as patches shrink: steps rise overall


def test_a_dataset_without_test_cases_is_planned_to_be_scored_on_validation():
    folds = fingerprint(cases_per_split={"train": 208, "val": 52, "test": 0})  # Hippocampus: no public test labels
    assert planner.evaluation(folds)["test"].value is False
    assert planner.evaluation(vessels()) == {}  # a test split: tested, as by default
