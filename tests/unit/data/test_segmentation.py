"""Reading cases (channels, masks, errors) and the SegmentationDataModule end to end.

A file-based segmentation set stops in one line when a split's masks hold no foreground at all."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from PIL import Image

from medexp.data.io import LoadCased
from medexp.data.segmentation import SegmentationDataModule
from medexp.data.transforms import case_preparation, output_transforms
from medexp.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA
from tests.fixtures_data import (
    CHASE_DATALIST,
    DRIVE_DATALIST,
    fundus_pair,
    phantom_volume,
    write_chase_like,
    write_decathlon_like,
    write_dicom_series,
    write_drive_like,
    write_nifti,
)

REAL_CHASE = SHARED_DATA / "CHASEDB1"


def save(path: Path, array: np.ndarray, mode=None, palette=None) -> str:
    image = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette)
    image.save(path)
    return str(path)


# ------------------------------------------------------------------------------------------------ reading cases
RGB = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)
GRAY_PALETTE = [v for i in range(256) for v in (i, i, i)]


@pytest.mark.parametrize(
    "name, make, expected",
    [
        ("rgb.png", lambda p: save(p, RGB), RGB.transpose(2, 0, 1)),
        ("rgba.png", lambda p: save(p, np.dstack([RGB, np.full((6, 5), 7, np.uint8)])), RGB.transpose(2, 0, 1)),
        ("gray.tif", lambda p: save(p, RGB[..., 0]), RGB[None, ..., 0]),
        ("gray_alpha.png", lambda p: save(p, np.dstack([RGB[..., 0], RGB[..., 1]]), mode="LA"), RGB[None, ..., 0]),
        ("gray_palette.gif", lambda p: save(p, RGB[..., 0], mode="P", palette=GRAY_PALETTE), RGB[None, ..., 0]),
        ("colour_palette.png", lambda p: save(p, (RGB[..., 0] > 127).astype(np.uint8), mode="P", palette=[255, 0, 0, 0, 0, 255]),
         np.stack([np.where(RGB[..., 0] > 127, 0, 255), np.zeros((6, 5)), np.where(RGB[..., 0] > 127, 255, 0)])),
    ],
)  # fmt: skip
def test_2d_images_are_channel_first_rows_first(tmp_path, name, make, expected):
    image = LoadCased()({"image": make(tmp_path / name)})["image"]
    assert tuple(image.shape) == expected.shape
    np.testing.assert_array_equal(image.numpy(), expected)


@pytest.mark.parametrize(
    "make, num_classes, label_values, expected",
    [
        (lambda p: save(p, np.array([[0, 255], [255, 0]], np.uint8)), 2, None, [[0, 1], [1, 0]]),
        (lambda p: save(p, np.array([[False, True], [True, True]])), 2, None, [[0, 1], [1, 1]]),
        (lambda p: save(p, np.array([[0, 1], [2, 0]], np.uint8), mode="P", palette=[0, 0, 0, 255, 0, 0, 0, 255, 0]), 3, None, [[0, 1], [2, 0]]),
        (lambda p: save(p, np.array([[0, 128], [255, 0]], np.uint8)), 3, [0, 128, 255], [[0, 1], [2, 0]]),
    ],
)  # fmt: skip
def test_masks_become_class_indices(tmp_path, make, num_classes, label_values, expected):
    image = save(tmp_path / "image.png", np.zeros((2, 2), np.uint8))
    case = LoadCased(num_classes=num_classes, label_values=label_values)(
        {"image": image, "label": make(tmp_path / "mask.png")}
    )
    assert case["label"].shape == (1, 2, 2)
    assert case["label"][0].tolist() == expected


def test_label_out_of_range_is_a_data_error(tmp_path):
    image = save(tmp_path / "image.png", np.zeros((2, 2), np.uint8))
    mask = save(tmp_path / "mask.png", np.array([[0, 1], [5, 0]], np.uint8))
    with pytest.raises(DataError, match=r"mask .*mask.png holds values \[0.0, 1.0, 5.0\] outside classes 0..2"):
        LoadCased(num_classes=3)({"image": image, "label": mask})
    with pytest.raises(DataError, match=r"values \[5.0\] not in label_values"):
        LoadCased(num_classes=3, label_values=[0, 1, 2])({"image": image, "label": mask})


def test_colour_mask_is_rejected(tmp_path):
    image = save(tmp_path / "image.png", np.zeros((6, 5), np.uint8))
    with pytest.raises(DataError, match="3 differing colour channels"):
        LoadCased()({"image": image, "label": save(tmp_path / "mask.png", RGB)})


def test_corrupt_and_truncated_files_name_their_path(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=f"cannot read image {corrupt}: "):
        LoadCased()({"image": str(corrupt)})
    whole = Path(save(tmp_path / "whole.png", RGB))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:60])
    with pytest.raises(DataError, match=f"cannot read image {truncated}: "):
        LoadCased()({"image": str(truncated)})
    broken_nifti = tmp_path / "broken.nii.gz"
    broken_nifti.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match=f"cannot read image {broken_nifti}: "):
        LoadCased()({"image": str(broken_nifti)})


def test_shape_mismatch_names_both_files_and_shapes(tmp_path):
    image = save(tmp_path / "image.png", RGB)
    mask = save(tmp_path / "mask.png", np.zeros((5, 6), np.uint8))
    with pytest.raises(
        DataError, match=r"label .*mask.png has spatial shape \(5, 6\) but image .*image.png has \(6, 5\)"
    ):
        LoadCased()({"image": image, "label": mask})


def test_nifti_volume_keeps_spacing_and_labels(tmp_path):
    volume, label = phantom_volume(seed=0)
    case = LoadCased(num_classes=3)({
        "image": str(write_nifti(tmp_path / "ct.nii.gz", volume, (0.7, 0.7, 2.0))),
        "label": str(write_nifti(tmp_path / "seg.nii", label, (0.7, 0.7, 2.0))),
    })  # fmt: skip
    assert tuple(case["image"].shape) == (1, *volume.shape)
    assert case["image"].pixdim.tolist() == pytest.approx([0.7, 0.7, 2.0])
    np.testing.assert_array_equal(case["label"][0].numpy(), label)


def test_dicom_series_folder_is_one_volume(tmp_path):
    volume = np.round(phantom_volume(seed=2, shape=(16, 12, 6))[0])
    image = LoadCased()({"image": str(write_dicom_series(tmp_path / "series", volume, spacing=(0.8, 0.7, 2.5)))})[
        "image"
    ]
    np.testing.assert_array_equal(image[0].numpy(), volume)
    assert image.pixdim.tolist() == pytest.approx([0.8, 0.7, 2.5])


# ------------------------------------------------------------------------------------------------ data module
def chase_module(root: Path, **overrides) -> SegmentationDataModule:
    options = dict(
        root=str(root), datalist=CHASE_DATALIST, split={"kind": "patients", "test_patients": ["05", "06"], "val_count": 1},
        patch_size=[16, 16], samples_per_image=2, batch_size=2, in_channels=3, fov_threshold=10,
        augmentation={"rotate_deg": 10, "affine_prob": 0.5, "flip_axes": [1], "flip_prob": 0.5},
    )  # fmt: skip
    return SegmentationDataModule(**{**options, **overrides})


@pytest.fixture(scope="module")
def chase_root(tmp_path_factory):
    return write_chase_like(tmp_path_factory.mktemp("chase"))


def test_train_batches_are_patches_with_long_labels(chase_root):
    module = chase_module(chase_root)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4, 1, 16, 16) and batch["label"].dtype == torch.long
    assert type(batch["image"]) is torch.Tensor  # plain tensors, no MONAI metadata in the training step
    assert set(batch["patient_id"]) <= module.split.patients("train")


def test_val_batches_are_whole_images_in_a_stable_order_with_fov(chase_root):
    module = chase_module(chase_root)
    module.setup("validate")
    first = [(b["case_id"][0], b["image"].sum().item()) for b in module.val_dataloader()]
    assert [case for case, _ in first] == [r["case_id"] for r in module.split.val]
    assert first == [(b["case_id"][0], b["image"].sum().item()) for b in module.val_dataloader()]
    batch = next(iter(module.test_dataloader()))
    assert batch["image"].shape == (1, 3, 40, 48) and batch["label"].shape == (1, 1, 40, 48)
    assert batch["fov"].dtype == torch.bool
    _, vessels = fundus_pair(seed=5 * 2)  # Image_05L
    disc = torch.from_numpy(fundus_pair(seed=10)[0].max(-1) > 0)
    assert (batch["fov"][0, 0] == disc).float().mean() > 0.97  # JPEG blurs the disc edge a little
    assert torch.equal(batch["label"][0, 0].bool(), torch.from_numpy(vessels))


def test_no_augmentation_and_whole_images_reproduce_the_eval_pipeline(chase_root):
    module = chase_module(
        chase_root, augmentation=None, patch_size=None, batch_size=1, split={"kind": "ratio", "seed": 0}
    )
    module.setup("fit")
    train_case = module._dataset("train")[0]
    loader = module._loader()
    eval_view = Compose(case_preparation(loader, module.preprocessing) + output_transforms(("image", "label")))(
        {k: module.split.train[0][k] for k in ("image", "label")})
    assert torch.equal(train_case["image"], eval_view["image"]) and torch.equal(train_case["label"], eval_view["label"])


def test_split_json_and_fingerprint(chase_root):
    module = chase_module(chase_root)
    content = json.loads(module.split_json())
    assert content["counts"] == {"train": 6, "val": 2, "test": 4}
    fingerprint = module.fingerprint()
    assert fingerprint["cases_per_split"] == {"train": 6, "val": 2, "test": 4}
    assert fingerprint["n_cases"] == 6 and fingerprint["shape"]["median"] == [40.0, 48.0]
    assert len(fingerprint["intensity"]["mean"]) == 3 and len(fingerprint["class_fraction"]) == 2
    assert 0 < fingerprint["class_fraction"][1] < 0.5
    assert fingerprint["split_sha256"] == chase_module(chase_root).fingerprint()["split_sha256"]
    assert (
        fingerprint["split_sha256"] != chase_module(chase_root, split={"kind": "ratio"}).fingerprint()["split_sha256"]
    )
    counts = module.class_counts("train")
    assert sum(counts) == 6 * 40 * 48 and counts[1] == pytest.approx(fingerprint["class_fraction"][1] * sum(counts))


def test_training_patches_follow_the_seed(chase_root):
    def first_batch(seed, global_seed):
        torch.manual_seed(global_seed)
        return next(iter(chase_module(chase_root, seed=seed).train_dataloader()))["image"]

    assert torch.equal(first_batch(1, global_seed=5), first_batch(1, global_seed=6))
    assert not torch.equal(first_batch(1, global_seed=5), first_batch(2, global_seed=5))


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_caches_give_the_same_cases(chase_root, tmp_path, cache):
    plain = [b["image"] for b in chase_module(chase_root).val_dataloader()]
    cached_module = chase_module(chase_root, cache=cache, cache_dir=str(tmp_path / "cache"))
    cached = [b["image"] for b in cached_module.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(plain, cached, strict=True)) and len(plain) == len(cached) == 2
    list(cached_module.train_dataloader())
    if cache == "disk":  # one folder per case of every split, prepared in setup's validation pass
        assert len(list((tmp_path / "cache").rglob("image.npy"))) == 6 + 2 + 4


def test_workers_are_persistent(chase_root):
    loader = chase_module(chase_root, num_workers=2).train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    assert next(iter(loader))["label"].shape == (4, 1, 16, 16)


def test_drive_layout_uses_the_fov_files(tmp_path):
    root = write_drive_like(tmp_path / "DRIVE", ids=(21, 22, 23, 24))
    module = SegmentationDataModule(root=str(root), datalist=DRIVE_DATALIST, split={"kind": "ratio", "seed": 1}, in_channels=3)
    batch = next(iter(module.val_dataloader()))
    assert batch["fov"].shape == (1, 1, 40, 48) and batch["fov"].any() and not batch["fov"].all()


def test_3d_decathlon_with_resampling_and_patches(tmp_path):
    path = write_decathlon_like(tmp_path / "Task", n_cases=4)
    module = SegmentationDataModule(
        root=str(path.parent), datalist={"kind": "decathlon", "path": "dataset.json"},
        split={"kind": "ratio", "val_ratio": 0.25, "test_ratio": 0.25}, spatial_dims=3, num_classes=3,
        preprocessing={"spacing": [3.0, 3.0, 3.0], "window": [-200, 200]}, patch_size=[8, 8, 8], samples_per_image=2,
        augmentation={"flip_axes": [0, 1, 2], "flip_prob": 0.5},
    )  # fmt: skip
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (4, 1, 8, 8, 8) and set(batch["label"].unique().tolist()) <= {0, 1, 2}
    val = next(iter(module.val_dataloader()))
    assert val["image"].shape == (1, 1, 12, 10, 12)
    assert module.fingerprint()["spacing"]["median"] == [1.5, 1.5, 3.0]


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"in_channels": 1}, DataError, "has 3 channels but data.in_channels=1"),
        ({"spatial_dims": 3}, DataError, "2 spatial dims but data.spatial_dims=3"),
        ({"num_classes": 1}, DataError, "outside classes 0..0"),
        ({"datalist": {**CHASE_DATALIST, "label_pattern": None}}, DataError, "has no mask path"),
        ({"split": {"kind": "ratio", "test_ratio": 0.0}}, DataError, "no test cases"),
        ({"cache": "gpu"}, ConfigError, "data.cache='gpu'"),
        ({"cache": "disk"}, ConfigError, "needs data.cache_dir"),
        ({"augmentation": {"rotate": 5}}, ConfigError, "rotate"),
    ],
)
def test_config_and_data_problems_are_one_line_errors(chase_root, overrides, error, message):
    with pytest.raises(error, match=message):
        module = chase_module(chase_root, **overrides)
        module.setup("test")
        module.test_dataloader()


@pytest.mark.skipif(not REAL_CHASE.is_dir(), reason="shared CHASEDB1 not present")
def test_real_chasedb1_protocol():
    module = SegmentationDataModule(
        root=str(REAL_CHASE), datalist=CHASE_DATALIST, in_channels=3, fov_threshold=10, patch_size=[64, 64],
        split={"kind": "patients", "test_patients": ["11", "12", "13", "14"], "val_count": 2},
    )  # fmt: skip
    module.setup("fit")
    assert (len(module.split.train), len(module.split.val), len(module.split.test)) == (16, 4, 8)
    batch = next(iter(module.test_dataloader()))
    assert batch["image"].shape == (1, 3, 960, 999) and batch["label"].shape == (1, 1, 960, 999)
    assert 0.6 < batch["fov"].float().mean() < 0.8 and set(batch["label"].unique().tolist()) == {0, 1}


CHASEDB1_YAML = r"""
_target_: medexp.data.segmentation.SegmentationDataModule
name: chasedb1
root: ${paths.data_dir}/CHASEDB1
datalist:
  kind: folder
  image_glob: Image_*.jpg
  label_pattern: "{stem}_1stHO.png"
  patient_regex: 'Image_(\d+)[LR]'
split:
  kind: patients
  test_patients: ["11", "12", "13", "14"]
  val_count: 2
  seed: 0
preprocessing:
  normalize: zscore
patch_size: [128, 128]
samples_per_image: 8
pos_neg_ratio: 1.0
batch_size: 4
num_workers: 0
cache: memory
num_classes: 2
class_names: [background, vessel]
in_channels: 3
spatial_dims: 2
fov_threshold: 10
"""


def test_the_chasedb1_config_instantiates_through_hydra(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    root = write_chase_like(tmp_path / "CHASEDB1", patients=range(1, 15))
    cfg = OmegaConf.merge(OmegaConf.create(CHASEDB1_YAML), {"root": str(root), "patch_size": [16, 16]})
    light = {
        "rotate_deg": 10,
        "scale": [0.9, 1.1],
        "translate": 0.05,
        "affine_prob": 0.5,
        "flip_axes": [1],
        "flip_prob": 0.5,
    }
    module = instantiate(cfg, augmentation=light, seed=0)
    module.setup("fit")
    assert (len(module.split.train), len(module.split.val), len(module.split.test)) == (16, 4, 8)
    assert module.split.patients("test") == {"11", "12", "13", "14"}
    assert next(iter(module.train_dataloader()))["image"].shape == (32, 3, 16, 16)
    assert module.class_names == ["background", "vessel"]


def test_data_fold_makes_k_fold_splits_that_cover_every_patient_once(chase_root):
    folds = [chase_module(chase_root, fold=k, num_folds=3) for k in range(3)]
    for module in folds:
        module.setup("fit")
    val = [set(m.split.patients("val")) for m in folds]
    test = {p for m in folds for p in m.split.patients("test")}
    assert all(a.isdisjoint(b) for i, a in enumerate(val) for b in val[i + 1 :])
    every = {p for m in folds[:1] for part in ("train", "val") for p in m.split.patients(part)}
    assert set().union(*val) == every and test.isdisjoint(every)


def test_preprocessing_can_keep_the_green_channel(chase_root):
    module = chase_module(chase_root, in_channels=1, preprocessing={"channels": [1]})
    module.setup("fit")
    assert next(iter(module.val_dataloader()))["image"].shape[1] == 1
    with pytest.raises(ConfigError, match="keeps 1 channel"):
        chase_module(chase_root, in_channels=3, preprocessing={"channels": [1]})


DATALIST = {"kind": "folder", "image_glob": "images/*", "label_pattern": "masks/{stem}.*"}


def photo_folder(root, foreground_in: set[str]) -> None:
    """Ten photos with 0/1 masks; the cases named in ``foreground_in`` have a lesion, the others none."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(10):
        name = f"case{index}"
        mask = np.zeros((32, 32), np.uint8)
        if name in foreground_in:
            mask[8:20, 10:22] = 1
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")


def module(root, validate: bool = True) -> SegmentationDataModule:
    return SegmentationDataModule(DATALIST, root=str(root), in_channels=3, name="photos", validate=validate,
                                  split={"kind": "ratio", "val_ratio": 0.2, "test_ratio": 0.2, "seed": 0})


def test_0_1_masks_keep_their_foreground_in_every_split(tmp_path):
    photo_folder(tmp_path, {f"case{i}" for i in range(10)})
    data = module(tmp_path)
    data.setup()
    for split in ("train", "val", "test"):
        assert data.class_counts(split)[1] == 144 * len(getattr(data.split, split))


def test_a_split_without_any_foreground_stops_in_one_line_naming_it(tmp_path):
    photo_folder(tmp_path / "probe", set())
    probe = module(tmp_path / "probe", validate=False)  # which cases the split puts where
    names = {split: [r["case_id"] for r in getattr(probe.split, split)] for split in ("train", "val", "test")}
    photo_folder(tmp_path / "data", set(names["train"]) | set(names["test"]))  # the val cases: background only
    with pytest.raises(DataError, match=r"data=photos: the val split's 2 masks hold no foreground at all"):
        module(tmp_path / "data").setup()


def test_data_folder_photos_reads_0_1_class_index_masks_as_classes(tmp_path, make_cfg):
    from hydra.utils import instantiate

    photo_folder(tmp_path / "photos", {f"case{i}" for i in range(10)})
    cfg = make_cfg("task=segmentation", "model=unet", "data=folder_photos", f"data.root={tmp_path / 'photos'}")
    data = instantiate(cfg.data)
    data.setup()
    assert data.class_counts("train")[1] == 144 * len(data.split.train)


def test_training_batches_are_augmented_on_their_device_with_one_draw(chase_root, monkeypatch):
    module = chase_module(chase_root, augmentation={"flip_axes": [1], "flip_prob": 1.0, "rotate_deg": 10,
                                                    "affine_prob": 0.0})
    assert not any("Flip" in type(t).__name__ for t in module._dataset("train").transform.transforms)  # not per sample
    batch = next(iter(module.train_dataloader()))
    draws = []
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: draws.append(a) or real_rand(*a, **k))
    module.trainer = SimpleNamespace(training=True)
    out = module.on_after_batch_transfer(batch, 0)
    assert len(draws) == 1  # every sample's every parameter from one draw
    assert torch.allclose(out["image"], batch["image"].flip(-1), atol=1e-5)
    assert out["label"].dtype == torch.long and torch.equal(out["label"], batch["label"].flip(-1))
    module.trainer = SimpleNamespace(training=False)  # validation and test batches are never augmented
    assert module.on_after_batch_transfer(batch, 0) is batch


def test_an_elastic_deformation_stays_per_sample_in_the_loader(chase_root):
    module = chase_module(chase_root, augmentation={"elastic_sigma": [9, 13], "elastic_magnitude": [0, 1],
                                                    "elastic_prob": 0.5, "flip_axes": [1], "flip_prob": 0.5})
    names = [type(t).__name__ for t in module._dataset("train").transform.transforms]
    assert "Rand2DElasticd" in names and "RandFlipd" not in names
    assert chase_module(chase_root, augment_on="loader")._dataset("train").transform.transforms[1].__class__.__name__ \
        == "RandRecipeAffined"
