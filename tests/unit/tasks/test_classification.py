"""The classification task's metric names, and its test-time mirroring."""
from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from medexp.tasks.classification import ClassificationTask, metric_key


def test_metric_keys_keep_mlflow_characters():
    assert metric_key("pleural thickening") == "pleural thickening"
    assert metric_key("a/b (c)") == "a_b _c_"


@pytest.mark.parametrize("multi_label", [False, True])
def test_mirrored_copies_are_averaged_in_evaluation_and_prediction(multi_label):
    """tta_flips=[[1]] (the second spatial axis): the probabilities are the mean of the image's and its mirror's,
    in validation/test scores and in predict_step; without it, the image's own."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 6 * 8, 3))  # sees where things are: mirroring changes it
    images, labels = torch.randn(4, 2, 6, 8), torch.tensor([[0, 1, 1], [1, 0, 0], [0, 0, 1], [1, 1, 0]])
    if not multi_label:
        labels = labels.argmax(1)
    prob = torch.sigmoid if multi_label else partial(torch.softmax, dim=1)
    for flips, expected in (([], prob(net(images))),
                            ([[1]], (prob(net(images)) + prob(net(images.flip(3)))) / 2)):
        task = ClassificationTask(net, partial(torch.optim.SGD, lr=0.1), num_classes=3, multi_label=multi_label,
                                  loss=nn.BCEWithLogitsLoss if multi_label else nn.CrossEntropyLoss,
                                  tta_flips=flips).eval()
        with torch.no_grad():
            torch.testing.assert_close(task.predict_step(images, 0), expected)
            scores, _ = task._eval_step("test", (images, labels))
        torch.testing.assert_close(scores, expected)
    assert not torch.allclose(prob(net(images)), prob(net(images.flip(3))))  # the two cases differ
