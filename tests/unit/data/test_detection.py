"""Lesion detection: boxes read right (2D PNG, 3D NIfTI), kept on the lesions through augmentation and resampling,
bad datalists stopped with one line, and a RetinaNet that learns the synthetic set, end to end through the CLI."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.data.box_utils import clip_boxes_to_image
from monai.transforms import Compose
from PIL import Image

from medexp.data.augmentation import AugmentationRecipe
from medexp.data.detection import DetectionDataModule, box_augmentation
from medexp.errors import ConfigError, DataError
from medexp.tasks.detection import DetectionTask
from medexp.workflows.train import run_experiment
from tests.fixtures_data import write_nifti
from tests.unit.workflows.test_predict import restored

QUIET = ["callbacks.progress_bar.refresh_rate=0"]
RETINANET_3D = ["data=detection_datalist", "model=retinanet", "task=detection"]  # size_divisible 16 on each axis
PNG_SHAPE = (40, 48)  # rows, columns: not square, so a swapped axis shows


def bright_box(image: torch.Tensor, threshold: float = 0.5) -> list[int]:
    """Standard-mode box around the pixels of channel 0 above ``threshold``."""
    where = torch.nonzero(torch.as_tensor(image)[0] > threshold)
    return [*where.min(0).values.tolist(), *(where.max(0).values + 1).tolist()]


def iou(a, b) -> float:
    dims = len(a) // 2
    inter = np.prod([max(0.0, min(a[d + dims], b[d + dims]) - max(a[d], b[d])) for d in range(dims)])
    area = [np.prod([box[d + dims] - box[d] for d in range(dims)]) for box in (a, b)]
    return float(inter / (area[0] + area[1] - inter))


def ellipse_case(centre=(14.0, 30.0), radii=(6.0, 9.0)) -> dict:
    rows, cols = np.mgrid[: PNG_SHAPE[0], : PNG_SHAPE[1]]
    lesion = ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1
    image = MetaTensor(torch.as_tensor(lesion[None], dtype=torch.float32))
    return {"image": image, "box": torch.tensor([bright_box(image)], dtype=torch.float32),
            "label": torch.tensor([0])}


@pytest.mark.parametrize("recipe,rotate90,exact", [
    ({"flip_axes": [0, 1], "flip_prob": 1.0}, 0.0, True),
    ({}, 1.0, True),
    ({"scale": [0.8, 1.25], "affine_prob": 1.0}, 0.0, False),
    ({"rotate_deg": 40, "translate": 0.1, "affine_prob": 1.0}, 0.0, False),
    ({"flip_axes": [0, 1], "flip_prob": 0.5, "scale": [0.9, 1.1], "rotate_deg": 20, "affine_prob": 1.0}, 0.5, False),
])
def test_augmented_boxes_stay_on_the_lesion(recipe, rotate90, exact):
    """The bright ellipse of the transformed image lies in its transformed box and fills most of it: flips and
    quarter turns exactly; zoom, rotation and shift up to interpolation (boxes of rotated ellipses come out a little
    large, as MONAI draws them)."""
    steps = Compose(box_augmentation(AugmentationRecipe.from_config(recipe), spatial_dims=2, rotate90_prob=rotate90))
    for seed in range(6):
        case = steps.set_random_state(seed)(ellipse_case())
        (box,), bright = case["box"].tolist(), bright_box(case["image"])
        if exact:
            assert box == bright, seed
        else:
            assert all(b <= v + 1 for b, v in zip(box[:2], bright[:2], strict=True)), (seed, box, bright)
            assert all(b >= v - 1 for b, v in zip(box[2:], bright[2:], strict=True)), (seed, box, bright)
            assert iou(box, bright) > 0.6, (seed, box, bright)  # measured >= 0.69


def test_elastic_augmentation_is_refused_for_boxes():
    with pytest.raises(ConfigError, match="elastic_prob=0"):
        box_augmentation(AugmentationRecipe(elastic_sigma=(9, 13), elastic_magnitude=(0, 100), elastic_prob=0.2), 2)


# -- datalists ---------------------------------------------------------------------------------------------------
def write_datalist(root: Path, cases: dict[str, list[dict]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(cases))
    return root


def write_png_cases(root: Path, n: int = 5) -> list[str]:
    """PNGs with a bright rectangle at rows 5..15, columns 20..30."""
    names = []
    for index in range(n):
        image = np.full(PNG_SHAPE, 40, np.uint8)
        image[5:15, 20:30] = 220
        names.append(f"images/case{index}.png")
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / names[-1])
    return names


def datamodule(root: Path, **options) -> DetectionDataModule:
    settings = {"datalist": {"kind": "json", "path": "dataset.json"}, "root": str(root), "spatial_dims": 2,
                "batch_size": 2, "num_classes": 1, **options}
    return DetectionDataModule(**settings)


def png_datalist(root: Path, box: list, label: list | None = None) -> Path:
    names = write_png_cases(root)
    case = lambda name: {"image": name, "box": [box], "label": label if label is not None else [0]}  # noqa: E731
    return write_datalist(root, {"training": [case(n) for n in names[:3]], "validation": [case(names[3])],
                                 "test": [case(names[4])]})


def test_2d_png_datalist_centre_size_boxes_column_first(tmp_path):
    """A COCO-style box (x = column) in centre-size mode becomes MONAI's row-first corners on the right pixels."""
    root = png_datalist(tmp_path, box=[25, 10, 10, 10])  # column centre 25, row centre 10, width 10, height 10
    dm = datamodule(root, box_mode="ccwh", box_axes="xy")
    dm.setup()
    assert [len(dm.split.train), len(dm.split.val), len(dm.split.test)] == [3, 1, 1]
    batch = next(iter(dm.val_dataloader()))
    assert batch["box"][0].tolist() == [[5.0, 20.0, 15.0, 30.0]]
    assert bright_box(batch["image"][0], threshold=0.0) == [5, 20, 15, 30]  # z-scored: bright pixels > 0
    train = next(iter(dm.train_dataloader()))
    assert len(train["image"]) == 2 and train["label"][0].dtype == torch.long


def step_names(dm: DetectionDataModule) -> list[str]:
    return [type(step).__name__ for step in dm._dataset("train").transform.transforms]


def test_training_batches_are_augmented_on_their_device_with_their_boxes(tmp_path, monkeypatch):
    """augment_on=device (the default): the loader only turns cases by quarters (one or three change a non-square
    image's shape) and the batch, after transfer, is flipped with its boxes in one random draw; evaluation batches
    never."""
    root = png_datalist(tmp_path, box=[5, 20, 15, 30])
    recipe = {"flip_axes": [1], "flip_prob": 1.0, "scale": [0.9, 1.1], "affine_prob": 0.0}
    dm = datamodule(root, box_mode="xyxy", augmentation=recipe, rotate90_prob=1.0)
    assert dm.augment_on == "device"
    names = step_names(dm)
    assert "RandRotateBox90d" in names and not any("Flip" in n or "Zoom" in n for n in names)
    batch = next(iter(dm.train_dataloader()))
    for image, boxes in zip(batch["image"], batch["box"], strict=True):
        assert image.shape[1:] in (PNG_SHAPE, PNG_SHAPE[::-1]) and boxes.tolist() == [bright_box(image, threshold=0.0)]
    draws = []
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: draws.append(a) or real_rand(*a, **k))
    dm.trainer = SimpleNamespace(training=True)
    out = dm.on_after_batch_transfer(batch, 0)
    assert len(draws) == 1
    for image, boxes, moved, flipped in zip(batch["image"], batch["box"], out["box"], out["image"], strict=True):
        assert torch.allclose(flipped, image.flip(-1), atol=1e-5)
        assert torch.allclose(moved[:, [1, 3]], image.shape[-1] - boxes[:, [3, 1]], atol=1e-4)
        assert moved.round().tolist() == [bright_box(flipped, threshold=0.0)]
    assert all(map(torch.equal, out["label"], batch["label"])) and out["case_id"] == batch["case_id"]
    dm.trainer = SimpleNamespace(training=False)
    assert dm.on_after_batch_transfer(batch, 0) is batch


def test_augment_on_loader_keeps_the_per_case_box_transforms(tmp_path):
    root = png_datalist(tmp_path, box=[5, 20, 15, 30])
    dm = datamodule(root, box_mode="xyxy", augmentation={"flip_axes": [1], "flip_prob": 1.0}, augment_on="loader")
    assert "RandFlipBoxd" in step_names(dm)
    batch = next(iter(dm.train_dataloader()))
    assert [boxes.tolist() for boxes in batch["box"]] == [[[5.0, 18.0, 15.0, 28.0]]] * 2
    dm.trainer = SimpleNamespace(training=True)
    assert dm.on_after_batch_transfer(batch, 0) is batch
    with pytest.raises(ConfigError, match="elastic_prob=0"):
        datamodule(root, augmentation={"elastic_sigma": [9, 13], "elastic_magnitude": [0, 1], "elastic_prob": 0.2})


WORLD_BOX = [10.5, 13.5, 12.0, 9.0, 9.0, 12.0]  # cccwhd, mm: voxel corners [4, 6, 2] .. [10, 12, 6] at 1.5 x 1.5 x 3 mm


def write_cube_volumes(root: Path, shape: tuple[int, ...], spacing: tuple[float, ...],
                       cubes_per_case: list[list[list[int]]], boxes_per_case: list[list[list[float]]]) -> Path:
    """A NIfTI volume per case, zero but for bright cubes (voxel corners ``[x0, y0, z0, x1, y1, z1]``), with the
    datalist boxes given for it (label 0): all cases but the last two train, then one validation, one test case."""
    cases = []
    for index, (cubes, boxes) in enumerate(zip(cubes_per_case, boxes_per_case, strict=True)):
        volume = np.zeros(shape, np.float32)
        for cube in cubes:
            volume[tuple(slice(low, high) for low, high in zip(cube[:3], cube[3:], strict=True))] = 100.0
        write_nifti(root / f"vol{index}.nii.gz", volume, spacing)
        cases.append({"image": f"vol{index}.nii.gz", "box": boxes, "label": [0] * len(boxes)})
    return write_datalist(root, {"training": cases[:-2], "validation": cases[-2:-1], "test": cases[-1:]})


def world_box_volumes(root: Path) -> DetectionDataModule:
    """1.5 x 1.5 x 3 mm volumes with a bright cube boxed by ``WORLD_BOX``, resampled to 3 mm by the preprocessing."""
    write_cube_volumes(root, (24, 20, 12), (1.5, 1.5, 3.0), [[[4, 6, 2, 10, 12, 6]]] * 5, [[WORLD_BOX]] * 5)
    return datamodule(root, spatial_dims=3, box_mode="cccwhd", box_coordinates="world",
                      preprocessing={"spacing": [3.0, 3.0, 3.0], "normalize": "minmax"})


def test_3d_nifti_world_boxes_follow_resampling(tmp_path):
    """World-coordinate (mm) centre-size boxes on 1.5 x 1.5 x 3 mm volumes, resampled to 3 mm: the box lands on
    the bright cube of the resampled volume."""
    batch = next(iter(world_box_volumes(tmp_path).test_dataloader()))
    image, (box,) = batch["image"][0], batch["box"][0].tolist()
    assert image.shape == (1, 12, 10, 12)
    assert box == pytest.approx([2.0, 3.0, 2.0, 5.0, 6.0, 6.0], abs=0.01)
    assert iou(box, bright_box(image, threshold=0.5)) > 0.6  # interpolation blurs the cube's faces by a voxel


@pytest.mark.parametrize("problem,message", [
    ("box_length", "needs 4 numbers per box"),
    ("outside", "lies outside the image"),
    ("label", "outside 0..0"),
    ("missing_image", "does not exist"),
    ("empty", "lists no cases"),
])
def test_bad_datalists_stop_with_one_line_naming_the_fix(tmp_path, problem, message):
    boxes = {"box_length": [5, 20, 15, 30, 1, 2], "outside": [30, 40, 45, 60]}
    root = png_datalist(tmp_path, box=boxes.get(problem, [5, 20, 15, 30]), label=[1] if problem == "label" else None)
    if problem == "missing_image":
        (root / "images" / "case0.png").unlink()
    if problem == "empty":
        write_datalist(root, {"training": []})
    with pytest.raises(DataError, match=message) as error:
        datamodule(root, box_mode="xyxy").setup()
    assert "\n" not in str(error.value) and ":" in str(error.value)


def test_unknown_box_mode_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="box_mode='xyz'"):
        datamodule(tmp_path, box_mode="xyz")


def test_3d_retinanet_detects_on_a_volume(make_cfg):
    """The model config builds a 3D detector too (spatial_dims from the data); evaluation returns boxes."""
    from medexp.factory import build_network

    cfg = make_cfg(*RETINANET_3D)
    detector = build_network(cfg).eval()
    with torch.no_grad():
        (result,) = detector([torch.rand(1, 30, 32, 20)])
    assert result["boxes"].shape[1] == 6 and set(result) == {"boxes", "labels", "labels_scores"}


@pytest.mark.parametrize("no_max_pool, finest_stride", [(False, 4), (True, 2)])
def test_no_max_pool_makes_the_finest_pyramid_level_finer(make_cfg, no_max_pool, finest_stride):
    """ResNet's no_max_pool switch must hold inside the feature pyramid too (it calls the backbone's children in
    order, max-pool included): finer anchors are what place boxes to within a pixel or two."""
    from medexp.factory import build_network

    cfg = make_cfg("experiment=synthetic_detection", f"model.backbone.no_max_pool={no_max_pool}")
    detector = build_network(cfg).eval()
    with torch.no_grad():
        features = detector.network.feature_extractor(torch.rand(1, 1, 64, 64))
    assert next(iter(features.values())).shape[-1] == 64 // finest_stride


# -- training ----------------------------------------------------------------------------------------------------
SMALL = ["experiment=synthetic_detection", "data.num_train=160", "data.num_val=40", "data.num_test=40", *QUIET]


def test_short_training_lifts_map_well_above_the_untrained_model(make_cfg):
    untrained = run_experiment(make_cfg(*SMALL, "logger=none", "train=false"))
    trained = run_experiment(make_cfg(*SMALL, "logger=none", "trainer.max_epochs=3"))
    # measured: untrained 0.00, 3 epochs of 160 images 0.80 (val 0.80)
    assert untrained["test/map"] < 0.1 and trained["test/map"] > 0.5, (untrained, trained)
    assert trained["val/map"] > 0.5 and "test/ap_iou50" in trained and "test/mar" in trained


def test_cli_trains_tests_and_writes_checkpoint_and_metrics(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "medexp-train"), "experiment=synthetic_detection", "logger=csv",
         "trainer.max_epochs=1", "data.num_train=16", "data.num_val=8", "data.num_test=8", f"hydra.run.dir={run_dir}",
         *QUIET],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "MEDEXP_OUTPUT_ROOT": str(tmp_path / "outputs")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((run_dir / "checkpoints").glob("best-epoch*.ckpt"))
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"test/map", "test/mar", "val/map", "train/loss_classification", "train/loss_box_regression"} <= logged
    assert 0.0 <= float(next(row["test/map"] for row in rows if row["test/map"])) <= 1.0
    assert (tmp_path / "outputs" / "data" / "synthetic_boxes").is_dir()  # generated where paths.data_dir points


# -- large volumes: training on patches, evaluating whole volumes by sliding windows ------------------------------
VOLUME, PATCH = (48, 48, 32), [32, 32, 16]
CUBES = [[8, 10, 6, 16, 18, 12], [30, 28, 18, 38, 36, 24]]  # voxel corners, 8 x 8 x 6 each


def cube_volumes(root: Path) -> Path:
    """Five 1 mm volumes of 48 x 48 x 32 with one bright cube (odd cases: two), boxed by its corners (xyzxyz)."""
    cubes = [CUBES[: 1 + index % 2] for index in range(5)]
    return write_cube_volumes(root, VOLUME, (1.0, 1.0, 1.0), cubes, cubes)


def patch_module(root: Path, **options) -> DetectionDataModule:
    return datamodule(root, **{"spatial_dims": 3, "box_mode": "xyzxyz", "preprocessing": {"normalize": "minmax"},
                               "cache": "memory", "patch_size": PATCH, "batch_size": 3, **options})


def test_patches_have_the_patch_size_and_boxes_exactly_on_their_cubes(tmp_path):
    """Each training image gives samples_per_image patches of patch_size; every patch's boxes, clipped and shifted
    with it, cover exactly its bright voxels (a cube cut by the patch border keeps the part inside)."""
    batch = next(iter(patch_module(cube_volumes(tmp_path), samples_per_image=4).train_dataloader()))
    assert len(batch["image"]) == 12 and sorted(Counter(batch["case_id"]).values()) == [4, 4, 4]
    for image, boxes in zip(batch["image"], batch["box"], strict=True):
        assert image.shape == (1, *PATCH) and torch.equal(boxes, boxes.round())  # crops shift by whole voxels
        in_boxes = torch.zeros(PATCH, dtype=torch.bool)
        for box in boxes.long().tolist():
            in_boxes[tuple(slice(low, high) for low, high in zip(box[:3], box[3:], strict=True))] = True
        assert torch.equal(in_boxes, image[0] > 0.5), boxes


def test_pos_neg_ratio_centres_patches_on_whole_boxes(tmp_path):
    """A patch centred on a box holds it whole: all of them with (practically) only such patches, about 3 in 4 with
    pos_neg_ratio=3; with 0 every centre is drawn away from the boxes, and few patches catch a whole cube."""
    root = cube_volumes(tmp_path)

    def share_with_a_whole_cube(pos_neg_ratio: float) -> float:
        batch = next(iter(patch_module(root, samples_per_image=16, pos_neg_ratio=pos_neg_ratio).train_dataloader()))
        sizes = [boxes[:, 3:] - boxes[:, :3] for boxes in batch["box"]]
        return float(np.mean([bool((size == torch.tensor([8, 8, 6])).all(1).any()) for size in sizes]))

    assert share_with_a_whole_cube(1e6) == 1.0
    assert share_with_a_whole_cube(3.0) > 0.6 and share_with_a_whole_cube(0.0) < 0.3  # 8 seeds: 0.69-0.83, 0.06-0.21


def test_bad_patch_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"patch_size=\[32, 32\] needs 3 positive sizes"):
        patch_module(tmp_path, patch_size=[32, 32])
    with pytest.raises(ConfigError, match="pos_neg_ratio=-1"):
        patch_module(tmp_path, pos_neg_ratio=-1)


@pytest.mark.parametrize("windows", [
    {"sw_roi_size": [24, 24, 16]},  # windows off the network's 16-voxel grid
    {"sw_roi_size": [32, 32, 32], "sw_overlap": 0.25},  # steps of 24 voxels
    {"sw_roi_size": [32, 32]},
])
def test_sliding_windows_off_the_feature_grid_are_config_errors(make_cfg, windows):
    """MONAI places a window's feature maps at its start divided by their stride: off the coarsest grid, boxes
    would shift or the maps fail to stitch."""
    from medexp.factory import build_network

    net = build_network(make_cfg(*RETINANET_3D))
    with pytest.raises(ConfigError, match=r"sw_roi_size=\[.*(size_divisible \[16, 16, 16\]|one size per)") as error:
        DetectionTask(net, optimizer=None, num_classes=1, **windows)
    assert "\n" not in str(error.value)


def test_trains_on_patches_and_detects_on_whole_volumes_by_sliding_windows(make_cfg, tmp_path):
    """Patches through a training epoch; validation and test by sliding windows. The trained detector's boxes lie
    in whole-volume coordinates: one window of the volume's size gives the boxes of no windows at all, smaller
    windows give boxes across the whole volume, and a window larger than the volume gives the boxes of the volume
    zero-padded to it, inside the volume (MONAI's own padding misplaced them)."""
    root = cube_volumes(tmp_path / "data")
    metrics = run_experiment(make_cfg(
        *RETINANET_3D, "logger=none", "augmentation=none", f"data.root={root}", "data.box_mode=xyzxyz",
        "data.preprocessing.normalize=minmax", "data.batch_size=2", f"data.patch_size={PATCH}",
        "data.samples_per_image=2", "task.sw_roi_size=[32,32,32]", "task.sw_overlap=0.5", "task.score_thresh=0",
        "trainer.max_epochs=1", *QUIET,
    ))
    assert np.isfinite(metrics["train/loss_box_regression"]) and 0 <= metrics["val/map"] <= 1
    assert 0 <= metrics["test/map"] <= 1
    (checkpoint,) = (tmp_path / "run" / "checkpoints").glob("best-*.ckpt")
    windows = {"none": (None, 0.0), "volume": (list(VOLUME), 0.0), "overlapping": ([32, 32, 32], 0.5),
               "larger": ([64, 48, 32], 0.0)}  # (sw_roi_size, sw_overlap)
    detected = {}
    for name, (roi_size, overlap) in windows.items():
        dm, task = restored(checkpoint, sw_roi_size=roi_size, sw_overlap=overlap)
        with torch.no_grad():
            (detected[name],) = task.predict_step(next(iter(dm.test_dataloader())), 0)
    assert len(detected["none"]["box"]) == 100  # every anchor scores above score_thresh=0: the most per image
    torch.testing.assert_close(detected["volume"]["box"], detected["none"]["box"])
    torch.testing.assert_close(detected["volume"]["label_scores"], detected["none"]["label_scores"])
    boxes = detected["overlapping"]["box"]
    assert len(boxes) > 0 and (boxes[:, :3] >= 0).all() and (boxes[:, 3:] <= torch.tensor(VOLUME)).all()
    assert boxes[:, 3].max() > 32  # from the second window along x, placed there
    with torch.no_grad():  # the volume padded at its end along x to the larger window, without sliding windows
        (padded,) = task.net([torch.nn.functional.pad(next(iter(dm.test_dataloader()))["image"][0], [0, 0, 0, 0, 0, 16])])
    boxes, inside = clip_boxes_to_image(padded["box"], VOLUME, remove_empty=True)
    torch.testing.assert_close(detected["larger"]["box"], boxes)
    torch.testing.assert_close(detected["larger"]["label_scores"], padded["label_scores"][inside])
