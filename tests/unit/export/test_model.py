"""The deployed models' own arithmetic, without a trained run: the graph's percentile is numpy's, the segmenter's
tensor preprocessing is the MONAI recipe's, the classifier feeds its network what the data module would, and the
detector's graph with the box selection outside it detects what the task does.

The deployed classifier standardises stored images exactly as the data module does, in 2D and 3D."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from torch import nn

from medexp.data.inmemory import InMemoryClassificationDataModule
from medexp.data.synthetic import SyntheticLesionDataModule
from medexp.data.transforms import preprocessing_transforms
from medexp.export.model import (
    DeployableClassifier,
    DeployableDetector,
    DeployableSegmenter,
    percentile,
    select_detections,
    stored_test_images,
)


class Seen(nn.Module):
    """A network that keeps what it was given (the preprocessed input), then applies ``net``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.input: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input = x
        return self.net(x)


@pytest.mark.parametrize("q", [0.0, 0.5, 37.0, 99.5, 100.0])
def test_percentile_is_numpys_linear_percentile_along_the_last_axis(q):
    flat = torch.randn(2, 3, 101, generator=torch.Generator().manual_seed(0))
    expected = np.percentile(flat.numpy(), q, axis=-1, keepdims=True)
    np.testing.assert_allclose(percentile(flat, q).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preprocessing", [
    {"normalize": "zscore"},
    {"clip_percentiles": [1.0, 99.0], "normalize": "zscore"},
    {"window": [-100, 300], "normalize": "minmax"},
    {"channels": [1], "clip_percentiles": [5.0, 95.0], "normalize": "minmax"},
])
@pytest.mark.parametrize("spatial", [(12, 10), (9, 8, 7)])
def test_segmenter_preprocesses_each_image_as_the_monai_recipe_does(preprocessing, spatial):
    images = torch.rand(2, 3, *spatial, generator=torch.Generator().manual_seed(1)) * 600 - 200
    images[1, 0] = 50.0  # a constant channel: zscore divides by 1, minmax gives 0
    network = Seen(nn.Identity())
    probabilities = DeployableSegmenter(network, preprocessing)(images)
    recipe = Compose(preprocessing_transforms(preprocessing, ("image",)))
    expected = torch.stack([torch.as_tensor(recipe({"image": MetaTensor(image)})["image"]) for image in images])
    torch.testing.assert_close(network.input, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(probabilities, torch.softmax(expected, dim=1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("multi_label", [False, True])
def test_classifier_gives_its_network_the_data_modules_standardised_images(multi_label):
    datamodule = SyntheticLesionDataModule(num_train=64, num_val=16, num_test=16, image_size=16, batch_size=8,
                                           num_classes=2, in_channels=1, spatial_dims=2)
    datamodule.setup("fit")
    stored = stored_test_images(datamodule, limit=5)
    assert stored.dtype == np.float32 and stored.shape == (5, 1, 16, 16) and stored.max() > 1  # 0-255, as stored
    network = Seen(nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 2)))
    with torch.no_grad():
        probabilities = DeployableClassifier(network, datamodule.mean, datamodule.std, multi_label)(
            torch.from_numpy(stored))
        logits = network.net(network.input)
    assert torch.equal(network.input, datamodule.standardise(datamodule.arrays.images["test"][:5]))
    expected = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)
    torch.testing.assert_close(probabilities, expected)


def test_deployed_classifier_averages_the_mirrored_copies_its_task_averages():
    from functools import partial

    from medexp.tasks.classification import ClassificationTask

    dm = InMemoryClassificationDataModule(batch_size=2, num_classes=2, in_channels=1, spatial_dims=3, image_size=4)
    dm.mean, dm.std = [0.3], [0.2]
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(4 * 5 * 6, 2))
    task = ClassificationTask(network, partial(torch.optim.SGD, lr=0.1), num_classes=2, tta_flips=[[0]]).eval()
    stored = np.random.default_rng(0).integers(0, 256, (3, 1, 4, 5, 6)).astype(np.uint8)
    deployed = DeployableClassifier(network, dm.mean, dm.std, multi_label=False, spatial_dims=3,
                                    flips=task.tta_flips)
    with torch.no_grad():
        expected = task.predict_probabilities(dm.standardise(stored))
        torch.testing.assert_close(deployed(torch.from_numpy(stored).float()), expected, atol=1e-5, rtol=1e-5)
        unmirrored = DeployableClassifier(network, dm.mean, dm.std, multi_label=False, spatial_dims=3)
        assert not torch.allclose(unmirrored(torch.from_numpy(stored).float()), expected, atol=1e-4)


def test_deployed_standardisation_matches_the_data_module_per_channel_in_3d():
    dm = InMemoryClassificationDataModule(batch_size=2, num_classes=2, in_channels=2, spatial_dims=3, image_size=4)
    dm.mean, dm.std = [0.2, 0.7], [0.5, 0.1]
    stored = np.random.default_rng(0).integers(0, 256, (3, 2, 4, 5, 6)).astype(np.uint8)
    identity = nn.Flatten()
    deployed = DeployableClassifier(identity, dm.mean, dm.std, multi_label=True, spatial_dims=3)
    # sigmoid of the flattened standardised input: compare before the sigmoid
    seen = torch.logit(deployed(torch.from_numpy(stored).float()), eps=0).view(3, 2, 4, 5, 6)
    assert torch.allclose(seen, dm.standardise(stored), atol=1e-4)


def test_deployed_classifier_of_float_images_takes_them_as_training_did():
    """A set stored as floats (CT in Hounsfield units, windowed images) is not divided by 255 in training: the
    deployed graph must not divide it either (it did, for every set)."""
    from types import SimpleNamespace

    from medexp.export.model import deployable
    from tests.unit.data.test_inmemory import Arrays

    rng = np.random.default_rng(0)
    images = {s: rng.normal(-300, 200, (n, 1, 8, 8)).astype(np.float32) for s, n in
              [("train", 40), ("val", 8), ("test", 8)]}
    datamodule = Arrays(images, {s: np.arange(len(x)) % 2 for s, x in images.items()})
    datamodule.setup()
    network = Seen(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)))
    task = SimpleNamespace(task_kind="classification", net=network, multi_label=False, tta_flips=[])
    with torch.no_grad():
        deployable(SimpleNamespace(datamodule=datamodule, task=task))(torch.from_numpy(stored_test_images(datamodule)))
    batch, _ = next(iter(datamodule.test_dataloader()))
    assert torch.equal(network.input, batch)


@pytest.mark.parametrize("shape", [(2, 64, 48), (2, 36, 44)])  # the second padded to the network's stride
def test_detector_graph_and_the_selection_outside_it_detect_what_the_task_detects(make_cfg, shape):
    """An untrained RetinaNet (scores near its prior 0.01: every box kept): the graph on stored intensities, MONAI's
    box selection on its outputs, equal the task's detections on the recipe's z-scored images."""
    from medexp.factory import build_network
    from medexp.tasks.detection import DetectionTask

    net = build_network(make_cfg("experiment=synthetic_detection", "data.in_channels=2"))
    task = DetectionTask(net, optimizer=None, num_classes=1, score_thresh=0.0).eval()
    images = torch.rand(2, *shape, generator=torch.Generator().manual_seed(2)) * 255
    preprocessing = {"clip_percentiles": [1.0, 99.0], "normalize": "zscore"}
    graph = DeployableDetector(task.net, preprocessing).eval()
    with torch.no_grad():
        outputs = [output.numpy() for output in graph(images)]
    assert graph.output_names == ("boxes_0", "scores_0", "boxes_1", "scores_1", "boxes_2", "scores_2")
    recipe = Compose(preprocessing_transforms(preprocessing, ("image",)))
    for image, found in zip(images, select_detections(task, outputs, shape[1:]), strict=True):
        with torch.no_grad():
            (expected,) = task.predict_step({"image": [recipe({"image": MetaTensor(image)})["image"]]}, 0)
        assert len(expected["box"]) > 50
        torch.testing.assert_close(found["box"], expected["box"], atol=1e-3, rtol=0)
        torch.testing.assert_close(found["label_scores"], expected["label_scores"], atol=1e-5, rtol=0)
        assert found["label"].tolist() == expected["label"].tolist()
