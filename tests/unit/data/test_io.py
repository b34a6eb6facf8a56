"""2D segmentation data as researchers bring it: RGB photographs of many sizes in one folder, masks stored as JPEG
(compression noise), as palette GIF/PNG whose indices are not the classes (white foreground at index 251, black
background at index 3), and as 8-bit 0/255 files, mixed; then a short ``medexp-train`` and ``medexp-predict``
through ``data=folder_photos``."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from medexp.data.io import LoadCased
from medexp.data.segmentation import SegmentationDataModule
from medexp.data.transforms import preprocessing_transforms
from medexp.errors import ConfigError, DataError

BIN = Path(sys.executable).parent
# (rows, columns): widths from 33 to 192 px, portrait and landscape, as a photo folder 332 to 1920 px wide, /10
SIZES = [(30, 33), (64, 48), (48, 64), (40, 96), (72, 120), (50, 192), (90, 60), (36, 80), (60, 140), (45, 45)]
MASK_FORMATS = ["jpeg", "palette_gif", "gray_png", "palette_png", "gray_jpeg"]
DATALIST = {"kind": "folder", "image_glob": "images/*", "label_pattern": "masks/{stem}.*"}


def lesion(size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A photograph (RGB uint8: a dark brown ellipse on textured skin tones) and its boolean mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: size[0], : size[1]]
    centre = rng.uniform(0.35, 0.65, 2) * size
    radii = rng.uniform(0.15, 0.3, 2) * size
    mask = ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 < 1
    image = np.empty((*size, 3))
    image[:] = (200, 160, 130)
    image[mask] = (110, 70, 50)
    image += rng.normal(0, 12, image.shape)
    return image.clip(0, 255).astype(np.uint8), mask


def palette_mask(mask: np.ndarray) -> Image.Image:
    """A palette mask as image editors write them: background index 3 (black), foreground index 251 (white),
    every other entry a colour that no pixel uses."""
    indices = np.where(mask, 251, 3).astype(np.uint8)
    palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    palette[3], palette[251] = (0, 0, 0), (255, 255, 255)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    return image


def save_mask(mask: np.ndarray, path_stem: Path, kind: str) -> Path:
    gray = (mask * 255).astype(np.uint8)
    if kind == "jpeg":  # RGB JPEG: compression noise and colour fringes along the edge
        path = path_stem.with_suffix(".jpg")
        Image.fromarray(np.dstack([gray] * 3)).save(path, quality=75)
    elif kind == "gray_jpeg":
        path = path_stem.with_suffix(".jpeg")
        Image.fromarray(gray).save(path, quality=60)
    elif kind == "gray_png":
        path = path_stem.with_suffix(".png")
        Image.fromarray(gray).save(path)
    else:
        path = path_stem.with_suffix(".gif" if kind == "palette_gif" else ".png")
        palette_mask(mask).save(path, optimize=False)  # Pillow would otherwise renumber a GIF's palette from 0
    return path


def write_photo_folder(root: Path, formats: list[str] = MASK_FORMATS) -> dict[str, np.ndarray]:
    """``images/photo_NN.jpg`` and ``masks/photo_NN.<ext>``, mask formats taken in turn from ``formats``;
    returns each case's true mask."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = {}
    for index, size in enumerate(SIZES):
        image, mask = lesion(size, seed=index)
        name = f"photo_{index:02d}"
        Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=90)
        save_mask(mask, root / "masks" / name, formats[index % len(formats)])
        truth[name] = mask
    return truth


def load(root: Path, name: str, **settings) -> np.ndarray:
    image = root / "images" / f"{name}.jpg"
    (label,) = (root / "masks").glob(f"{name}.*")
    return LoadCased(**settings)({"image": str(image), "label": str(label)})["label"][0].numpy()


# ------------------------------------------------------------------------------------------------ reading masks
@pytest.mark.parametrize("kind", ["palette_gif", "palette_png"])
def test_palette_masks_are_read_by_colour_not_index(tmp_path, kind):
    _, mask = lesion((30, 41), seed=1)
    path = save_mask(mask, tmp_path / "mask", kind)
    assert set(np.unique(np.asarray(Image.open(path)))) == {3, 251}  # the stored indices are not the classes
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((30, 41, 3), np.uint8)).save(image)
    label = LoadCased(num_classes=2)({"image": str(image), "label": str(path)})["label"]
    np.testing.assert_array_equal(label[0].numpy(), mask.astype(np.float32))


def test_a_folder_mixing_palette_and_0_255_masks_needs_no_setting(tmp_path):
    truth = write_photo_folder(tmp_path, ["palette_gif", "gray_png", "palette_png"])
    for name, mask in truth.items():
        np.testing.assert_array_equal(load(tmp_path, name, num_classes=2), mask)
    module = SegmentationDataModule(DATALIST, root=str(tmp_path), in_channels=3,
                                    split={"kind": "ratio", "val_ratio": 0.2, "test_ratio": 0.2})
    module.setup()
    train = [r["case_id"] for r in module.split.train]
    assert module.class_counts("train")[1] == sum(int(truth[name].sum()) for name in train)


def test_jpeg_masks_need_a_threshold_and_then_match_the_truth(tmp_path):
    truth = write_photo_folder(tmp_path, ["jpeg", "gray_jpeg"])
    with pytest.raises(DataError, match="photo_00.jpg .*data.mask_threshold"):
        load(tmp_path, "photo_00", num_classes=2)
    with pytest.raises(DataError, match="photo_01.jpeg holds values .*data.mask_threshold"):
        load(tmp_path, "photo_01", num_classes=2)
    for name, mask in truth.items():
        read = load(tmp_path, name, num_classes=2, mask_threshold=127)
        assert set(np.unique(read)) == {0.0, 1.0}
        assert (read == mask).mean() > 0.99, name  # the few pixels JPEG blurs across the edge may flip


def test_mask_threshold_reads_exact_masks_unchanged(tmp_path):
    truth = write_photo_folder(tmp_path, ["palette_gif", "gray_png", "palette_png"])
    for name, mask in truth.items():
        np.testing.assert_array_equal(load(tmp_path, name, num_classes=2, mask_threshold=127), mask)


def test_mask_threshold_conflicts_are_config_errors():
    with pytest.raises(ConfigError, match="mask_threshold and data.label_values .* keep one"):
        LoadCased(num_classes=2, label_values=[0, 255], mask_threshold=127)
    with pytest.raises(ConfigError, match="binary but data.num_classes=3"):
        LoadCased(num_classes=3, mask_threshold=127)


def test_resize_to_a_longest_side_keeps_proportions_for_image_and_mask(tmp_path):
    from monai.transforms import Compose

    write_photo_folder(tmp_path, ["gray_png"])
    pipeline = Compose([LoadCased(num_classes=2), *preprocessing_transforms({"resize": 64})])
    for index, size in enumerate(SIZES[:6]):
        name = f"photo_{index:02d}"
        (label,) = (tmp_path / "masks").glob(f"{name}.*")
        case = pipeline({"image": str(tmp_path / "images" / f"{name}.jpg"), "label": str(label)})
        shape = tuple(case["image"].shape[1:])
        assert max(shape) == 64 and abs(shape[0] / shape[1] - size[0] / size[1]) < 0.06, (size, shape)
        assert tuple(case["label"].shape[1:]) == shape and set(np.unique(case["label"].numpy())) == {0.0, 1.0}


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_photo_folder_trains_tests_and_predicts_at_each_photos_own_size(tmp_path, tracking_uri):
    root = tmp_path / "photos"
    write_photo_folder(root)
    run_dir = tmp_path / "run"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(BIN / "medexp-train"), "task=segmentation", "data=folder_photos", f"data.root={root}", "model=unet",
         "model.channels=[8,16]", "model.strides=[2]", "model.num_res_units=1", "data.preprocessing.resize=64",
         "data.patch_size=[32,32]", "data.samples_per_image=2", "trainer.max_epochs=2",
         "callbacks.progress_bar.refresh_rate=0", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    for key in ("val/dice", "test/dice", "test/loss", "train/loss"):
        assert math.isfinite(run.data.metrics[key]), key
    assert list((run_dir / "report").glob("*.png")), "no report figures"
    fingerprint = json.loads((run_dir / "dataset_fingerprint.json").read_text())
    assert fingerprint["shape"]["min"] != fingerprint["shape"]["max"]  # the photos kept their own sizes on disk

    (ckpt,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    new = tmp_path / "new"
    new.mkdir()
    for index in (3, 6):  # 40x96 landscape, 90x60 portrait
        (new / f"photo_{index:02d}.jpg").write_bytes((root / "images" / f"photo_{index:02d}.jpg").read_bytes())
    done = subprocess.run(
        [str(BIN / "medexp-predict"), f"ckpt_path={ckpt}", f"inputs={new}", f"output_dir={tmp_path / 'predicted'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for image in sorted(new.iterdir()):
        mask = np.asarray(Image.open(tmp_path / "predicted" / f"{image.stem}_mask.png"))
        assert mask.shape == Image.open(image).size[::-1] and set(np.unique(mask)) <= {0, 255}
