"""Preprocessing, patch sampling and the per-sample MONAI augmentation engine."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandomizableTransform

from medexp.data.augmentation import AugmentationRecipe
from medexp.data.io import LoadCased
from medexp.data.transforms import (
    case_preparation,
    monai_augmentation,
    preprocessing_transforms,
    sampling_transforms,
    training_steps,
)
from medexp.errors import ConfigError
from tests.fixtures_data import phantom_volume

SPATIAL = AugmentationRecipe(
    rotate_deg=30, scale=(0.8, 1.2), translate=0.1, affine_prob=1.0, flip_axes=(0, 1), flip_prob=0.5,
    elastic_sigma=(6.0, 6.0), elastic_magnitude=(1.0, 2.0), elastic_prob=1.0,
)  # fmt: skip


def run(transforms, case, seed=0):
    pipeline = Compose(transforms)
    pipeline.set_random_state(seed)
    return pipeline({key: value.clone() if torch.is_tensor(value) else value for key, value in case.items()})


def blob_case(shape=(48, 40), spacing=None):
    """A binary shape (an off-centre L) as both image and label: any disagreement is a transform mismatch."""
    mask = torch.zeros(1, *shape)
    index = tuple(slice(s // 4, s // 2) for s in shape)
    mask[(0, *index)] = 1
    mask[(0, slice(shape[0] // 4, 3 * shape[0] // 4), *[slice(s // 4, s // 4 + 3) for s in shape[1:]])] = 1
    affine = torch.diag(torch.tensor([*(spacing or [1.0] * len(shape)), 1.0], dtype=torch.float64))
    return {"image": MetaTensor(mask.clone(), affine=affine), "label": MetaTensor(mask.clone(), affine=affine)}


def dice(a, b):
    return (2 * (a & b).sum() / (a.sum() + b.sum())).item()


def test_zscore_is_per_image_and_channel():
    image = torch.stack([torch.arange(100.0).reshape(10, 10), 5 + 3 * torch.rand(10, 10)])
    out = run(preprocessing_transforms({}, ("image",)), {"image": MetaTensor(image)})["image"]
    assert torch.allclose(out.mean(dim=(1, 2)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out.std(dim=(1, 2), unbiased=False), torch.ones(2), atol=1e-4)


def test_ct_window_maps_to_unit_range_and_clips():
    image = MetaTensor(torch.tensor([[[-1000.0, -100.0, 100.0, 300.0, 2000.0]]]))
    out = run(preprocessing_transforms({"window": [-100, 300], "normalize": "none"}, ("image",)), {"image": image})[
        "image"
    ]
    assert out.flatten().tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def test_percentile_clipping_removes_outliers():
    image = torch.zeros(1, 10, 10)
    image[0, 0, 0] = 1e6
    out = run(
        preprocessing_transforms({"clip_percentiles": [0, 98], "normalize": "none"}, ("image",)),
        {"image": MetaTensor(image)},
    )
    assert out["image"].max() < 1e6


def test_resampling_to_a_spacing_keeps_masks_as_class_indices():
    volume, label = phantom_volume(seed=1, shape=(24, 20, 12))
    affine = torch.diag(torch.tensor([1.5, 1.5, 3.0, 1.0], dtype=torch.float64))
    case = {"image": MetaTensor(torch.from_numpy(volume)[None], affine=affine),
            "label": MetaTensor(torch.from_numpy(label.astype(np.float32))[None], affine=affine)}  # fmt: skip
    out = run(preprocessing_transforms({"spacing": [3.0, 3.0, 3.0]}), case)
    assert tuple(out["image"].shape) == tuple(out["label"].shape) == (1, 12, 10, 12)
    assert set(out["label"].unique().tolist()) == {0.0, 1.0, 2.0}
    assert out["image"].pixdim.tolist() == pytest.approx([3.0, 3.0, 3.0])


def test_resize_moves_image_and_mask_together():
    out = run(preprocessing_transforms({"resize": [24, 20], "normalize": "none"}), blob_case())
    assert out["image"].shape[1:] == out["label"].shape[1:] == (24, 20)
    assert set(out["label"].unique().tolist()) <= {0.0, 1.0}
    assert dice(out["image"] > 0.5, out["label"] > 0.5) > 0.9


def test_unknown_preprocessing_option_is_a_config_error():
    with pytest.raises(ConfigError, match="spacings"):
        preprocessing_transforms({"spacings": [1, 1]})
    with pytest.raises(ConfigError, match="normalize='l2'"):
        preprocessing_transforms({"normalize": "l2"})


def test_identity_recipe_adds_no_transform():
    assert monai_augmentation(AugmentationRecipe()) == []
    assert monai_augmentation(AugmentationRecipe(rotate_deg=30, affine_prob=0.0, noise_std=0.1)) == []


@pytest.mark.parametrize("shape", [(48, 40), (24, 20, 16)])
def test_image_and_mask_move_together_under_spatial_augmentation(shape):
    case = blob_case(shape)
    recipe = SPATIAL if len(shape) == 2 else AugmentationRecipe(**{**SPATIAL.__dict__, "elastic_sigma": (2.0, 3.0)})
    moved = 0
    for seed in range(4):
        out = run(monai_augmentation(recipe, spatial_dims=len(shape)), case, seed=seed)
        assert set(out["label"].unique().tolist()) <= {0.0, 1.0}, "masks must stay class indices (nearest)"
        assert (
            dice(out["image"] > 0.5, out["label"] > 0.5) > 0.9
        )  # only boundary pixels may differ (~0.4 if not moved together)
        moved += int(not torch.equal(out["label"], case["label"]))
    assert moved == 4


def test_zoom_factor_above_one_enlarges_the_content():
    out = run(monai_augmentation(AugmentationRecipe(scale=(2.0, 2.0), affine_prob=1.0)), blob_case((64, 64)))
    assert out["label"].sum().item() == pytest.approx(4 * blob_case((64, 64))["label"].sum().item(), rel=0.05)


def test_translation_is_a_fraction_of_the_image_extent():
    case = blob_case((64, 64))
    centre = lambda mask: torch.nonzero(mask[0]).float().mean(0)  # noqa: E731
    shifts = [
        (centre(run(monai_augmentation(AugmentationRecipe(translate=0.25, affine_prob=1.0)), case, seed)["label"]) - centre(case["label"])).abs()
        for seed in range(6)
    ]  # fmt: skip
    assert max(s.max() for s in shifts) <= 0.25 * 64 + 1
    assert max(s.max() for s in shifts) > 0.05 * 64


def test_intensity_augmentation_changes_the_image_only():
    recipe = AugmentationRecipe(
        intensity_shift=0.5, contrast=(0.5, 1.5), gamma=(0.7, 1.5), intensity_prob=1.0, noise_std=0.1, noise_prob=1.0
    )
    case = blob_case()
    case["image"] = case["image"] + torch.rand_like(case["image"])
    out = run(monai_augmentation(recipe), case)
    assert torch.equal(out["label"], case["label"])
    assert not torch.allclose(out["image"], case["image"])


def test_contrast_scales_around_the_mean():
    image = MetaTensor(torch.rand(1, 32, 32))
    out = run(
        monai_augmentation(AugmentationRecipe(contrast=(2.0, 2.0), intensity_prob=1.0), keys=("image",)),
        {"image": image},
    )["image"]
    assert out.mean().item() == pytest.approx(image.mean().item(), abs=1e-5)
    assert out.std().item() == pytest.approx(2 * image.std().item(), rel=1e-4)


def test_noise_uses_the_recipe_standard_deviation():
    image = MetaTensor(torch.zeros(1, 128, 128))
    out = run(monai_augmentation(AugmentationRecipe(noise_std=0.3, noise_prob=1.0), keys=("image",)), {"image": image})[
        "image"
    ]
    assert out.std().item() == pytest.approx(0.3, rel=0.05)


def test_pos_neg_ratio_steers_patches_to_foreground():
    case = blob_case((64, 64))
    case["label"] = torch.zeros_like(case["label"])
    case["label"][0, 40:44, 40:44] = 1
    keys = ("image", "label")
    foreground = run(sampling_transforms(keys, [16, 16], samples_per_image=8, pos_neg_ratio=1e6), case)
    background = run(sampling_transforms(keys, [16, 16], samples_per_image=8, pos_neg_ratio=0.0), case)
    assert all(patch["label"].sum() > 0 for patch in foreground)
    assert sum(patch["label"].sum() > 0 for patch in background) < 8
    assert all(tuple(patch["image"].shape) == (1, 16, 16) for patch in foreground + background)


def test_images_smaller_than_a_patch_are_padded():
    patches = run(
        sampling_transforms(("image", "label"), [64, 64], samples_per_image=2, sampler="uniform"), blob_case((48, 40))
    )
    assert [tuple(p["label"].shape) for p in patches] == [(1, 64, 64)] * 2


def test_the_kept_preparation_is_deterministic_and_each_epoch_starts_random():
    kept = case_preparation(LoadCased(), {"spacing": [1.0, 1.0]})
    epoch = training_steps(("image", "label"), SPATIAL, spatial_dims=2, patch_size=[16, 16])
    assert isinstance(kept[0], LoadCased) and len(kept) >= 4  # load, spacing, zscore, compact
    assert not any(isinstance(t, RandomizableTransform) for t in kept)
    assert isinstance(epoch[0], RandomizableTransform)  # the patch sampler: nothing random is cached
