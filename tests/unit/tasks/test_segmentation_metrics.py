"""Segmentation metrics from label maps, one class at a time: the values of MONAI's one-hot metrics, without the
memory of a whole-volume one-hot per class."""
from __future__ import annotations

import functools

import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from torch import nn

from medexp.tasks.segmentation import SegmentationTask, hd95_per_class

CLASSES = 4


def label_maps() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    predicted, truth = (torch.randint(0, CLASSES, (3, 1, 20, 24, 16), generator=generator) for _ in range(2))
    truth[1][truth[1] == 2] = 0  # a structure missing from one case's truth,
    predicted[2][predicted[2] == 3] = 0  # and one from both prediction and truth of another
    truth[2][truth[2] == 3] = 0
    return predicted, truth


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.one_hot(labels[:, 0], CLASSES).movedim(-1, 1)


def test_hd95_per_class_equals_monais_one_hot_metric():
    predicted, truth = label_maps()
    monai = HausdorffDistanceMetric(include_background=False, percentile=95)(one_hot(predicted), one_hot(truth))
    assert torch.allclose(hd95_per_class(predicted, truth, CLASSES), monai, equal_nan=True)


def test_dice_of_label_maps_equals_the_one_hot_dice():
    predicted, truth = label_maps()
    settings = {"include_background": False, "reduction": "mean_batch", "ignore_empty": False}
    from_maps = DiceMetric(**settings, num_classes=CLASSES)(predicted, truth)
    assert torch.equal(from_maps, DiceMetric(**settings)(one_hot(predicted), one_hot(truth)))


def test_evaluation_allocates_nothing_larger_than_the_class_probabilities():
    classes, shape = 8, (48, 48, 48)
    task = SegmentationTask(nn.Conv3d(1, classes, 1), functools.partial(torch.optim.SGD, lr=0.1), classes,
                            roi_size=list(shape), loss=functools.partial(DiceCELoss, to_onehot_y=True, softmax=True))
    batch = {"image": torch.randn(1, 1, *shape), "label": torch.randint(0, classes, (1, 1, *shape))}
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                 profile_memory=True) as profile:
        task._eval_step("test", batch)  # HD95 included
    largest = max(event.cpu_memory_usage for event in profile.events())
    # the float32 probabilities: (classes, *shape) x 4 bytes; an int64 one-hot of the volume would be twice that
    assert largest <= classes * torch.Size(shape).numel() * 4
    assert task.dice["test"].aggregate().shape == (classes - 1,)
