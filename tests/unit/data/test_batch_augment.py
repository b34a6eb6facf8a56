"""The batched augmentation engine: identity when off, exact flips, masks that stay aligned, recipe ranges."""
from __future__ import annotations

import pytest
import torch

from medexp.data.augmentation import AugmentationRecipe
from medexp.data.batch_augment import BatchAugmentation
from medexp.errors import ConfigError


def test_empty_recipe_is_identity():
    assert AugmentationRecipe.from_config({}).is_identity
    assert AugmentationRecipe.from_config({"rotate_deg": 30}).is_identity  # no probability, nothing fires
    assert not AugmentationRecipe.from_config({"rotate_deg": 30, "affine_prob": 0.5}).is_identity


def test_unknown_recipe_key_is_an_error():
    with pytest.raises(ConfigError, match="rotate_degs"):
        AugmentationRecipe.from_config({"rotate_degs": 10})


def test_certain_flip_is_exact():
    x = torch.randn(4, 1, 8, 8)
    out = BatchAugmentation(AugmentationRecipe(flip_axes=(1,), flip_prob=1.0))(x)
    assert torch.allclose(out, x.flip(-1), atol=1e-5)
    out = BatchAugmentation(AugmentationRecipe(flip_axes=(0,), flip_prob=1.0))(x)
    assert torch.allclose(out, x.flip(-2), atol=1e-5)


def test_masks_move_with_images():
    torch.manual_seed(0)
    masks = torch.zeros(16, 1, 32, 32)
    for i in range(16):  # one off-centre square per image: an asymmetric shape, few boundary pixels
        r, c = torch.randint(2, 20, (2,)).tolist()
        masks[i, 0, r : r + 10, c : c + 8] = 1
    recipe = AugmentationRecipe(rotate_deg=30, scale=(0.8, 1.2), translate=0.1, affine_prob=1.0, flip_axes=(0, 1),
                                flip_prob=0.5)
    images, moved = BatchAugmentation(recipe)(masks.clone(), masks.clone())
    agree = ((images > 0.5).float() == moved).float().mean()
    assert agree > 0.97  # bilinear vs nearest differ only on a few boundary pixels
    assert not torch.equal(moved, masks)  # and something did move


def test_intensity_ranges_follow_the_recipe():
    torch.manual_seed(0)
    x = torch.zeros(4000, 1, 4, 4)
    out = BatchAugmentation(AugmentationRecipe(intensity_shift=0.2, intensity_prob=1.0))(x)
    shifts = out.mean(dim=(1, 2, 3))
    assert shifts.min() >= -0.2 and shifts.max() <= 0.2
    assert abs(float(shifts.std()) - 0.4 / 12**0.5) < 0.01  # uniform(-0.2, 0.2)
    half = BatchAugmentation(AugmentationRecipe(intensity_shift=0.2, intensity_prob=0.5))(x)
    assert abs(float((half.abs().sum(dim=(1, 2, 3)) > 0).float().mean()) - 0.5) < 0.05


def test_3d_flips_are_exact_per_axis_and_masks_follow_rotations():
    x = torch.randn(3, 1, 6, 8, 10)  # (B, C, D, H, W): spatial axis 0 = D
    for axis in (0, 1, 2):
        out = BatchAugmentation(AugmentationRecipe(flip_axes=(axis,), flip_prob=1.0))(x)
        assert torch.allclose(out, x.flip(2 + axis), atol=1e-5)
    torch.manual_seed(0)
    masks = torch.zeros(8, 1, 20, 20, 20)
    masks[:, :, 3:12, 5:11, 4:16] = 1
    recipe = AugmentationRecipe(rotate_deg=30, scale=(0.8, 1.2), translate=0.1, affine_prob=1.0)
    images, moved = BatchAugmentation(recipe)(masks.clone(), masks.clone())
    assert ((images > 0.5).float() == moved).float().mean() > 0.97
    assert not torch.equal(moved, masks)
    # each sample turned about its own three angles: the moved boxes differ from one another
    assert len({tuple(m.nonzero().float().mean(0).round().tolist()) for m in moved}) > 4


def test_batched_engine_rejects_other_ranks():
    with pytest.raises(ValueError, match="2D or 3D batches"):
        BatchAugmentation(AugmentationRecipe(flip_axes=(0,), flip_prob=1.0))(torch.zeros(1, 4, 4))
