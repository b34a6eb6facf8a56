"""Lesion detection: boxes read right (2D PNG, 3D NIfTI), kept on the lesions through augmentation and resampling,
bad datalists stopped with one line, and a RetinaNet that learns the synthetic set, end to end through the CLI."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image

from fixtures_data import write_nifti
from medexp.data.augmentation import AugmentationRecipe
from medexp.data.detection import DetectionDataModule, box_augmentation
from medexp.data.synthetic_boxes import make_box_lesions
from medexp.errors import ConfigError, DataError
from medexp.pipeline import run_experiment

QUIET = ["callbacks.progress_bar.refresh_rate=0"]
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


def test_synthetic_boxes_are_seeded_and_hold_the_bright_lesions():
    images, boxes = make_box_lesions(6, 64, seed=3)
    again, boxes_again = make_box_lesions(6, 64, seed=3)
    assert np.array_equal(images, again) and boxes == boxes_again
    for image, image_boxes in zip(images.astype(float), boxes, strict=True):
        assert 1 <= len(image_boxes) <= 3
        for r0, c0, r1, c1 in image_boxes:  # brighter than a 3-pixel ring around the box (0..255)
            around = image[max(r0 - 3, 0):r1 + 3, max(c0 - 3, 0):c1 + 3]
            ring_mean = (around.sum() - image[r0:r1, c0:c1].sum()) / (around.size - (r1 - r0) * (c1 - c0))
            assert image[r0:r1, c0:c1].mean() > ring_mean + 15


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


WORLD_BOX = [10.5, 13.5, 12.0, 9.0, 9.0, 12.0]  # cccwhd, mm: voxel corners [4, 6, 2] .. [10, 12, 6] at 1.5 x 1.5 x 3 mm


def world_box_volumes(root: Path) -> DetectionDataModule:
    """1.5 x 1.5 x 3 mm volumes with a bright cube boxed by ``WORLD_BOX``, resampled to 3 mm by the preprocessing."""
    cases = []
    for index in range(5):
        volume = np.zeros((24, 20, 12), np.float32)
        volume[4:10, 6:12, 2:6] = 100.0
        write_nifti(root / f"vol{index}.nii.gz", volume, (1.5, 1.5, 3.0))
        cases.append({"image": f"vol{index}.nii.gz", "box": [WORLD_BOX], "label": [0]})
    write_datalist(root, {"training": cases[:3], "validation": cases[3:4], "test": cases[4:]})
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
    from hydra.utils import instantiate

    cfg = make_cfg("data=detection_datalist", "model=retinanet", "task=detection")
    detector = instantiate(cfg.model).eval()
    with torch.no_grad():
        (result,) = detector([torch.rand(1, 30, 32, 20)])
    assert result["boxes"].shape[1] == 6 and set(result) == {"boxes", "labels", "labels_scores"}


@pytest.mark.parametrize("no_max_pool, finest_stride", [(False, 4), (True, 2)])
def test_no_max_pool_makes_the_finest_pyramid_level_finer(make_cfg, no_max_pool, finest_stride):
    """ResNet's no_max_pool switch must hold inside the feature pyramid too (it calls the backbone's children in
    order, max-pool included): finer anchors are what place boxes to within a pixel or two."""
    from hydra.utils import instantiate

    cfg = make_cfg("experiment=synthetic_detection", f"model.backbone.no_max_pool={no_max_pool}")
    detector = instantiate(cfg.model).eval()
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

