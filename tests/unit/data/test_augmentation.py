"""One recipe, two engines: the batched in-memory engine and the per-sample MONAI engine give the same
distribution of augmented images, and both keep masks aligned with images."""
from __future__ import annotations

import pytest
import torch

from medexp.data.augmentation import AugmentationRecipe
from medexp.data.batch_augment import BatchAugmentation
from medexp.data.transforms import monai_augmentation

N = 400


def pattern() -> torch.Tensor:
    """An asymmetric test image: a bright off-centre bar and a gradient, so every transform changes something."""
    image = torch.linspace(-1, 1, 32).repeat(32, 1)
    image[6:12, 4:24] += 2.0
    return image[None]  # (1, 32, 32)


def per_sample(recipe: AugmentationRecipe, image: torch.Tensor) -> torch.Tensor:
    from monai.transforms import Compose

    pipeline = Compose(monai_augmentation(recipe, keys=("image",), spatial_dims=2))
    pipeline.set_random_state(seed=0)
    return torch.stack([torch.as_tensor(pipeline({"image": image.clone()})["image"]) for _ in range(N)])


def batched(recipe: AugmentationRecipe, image: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    return BatchAugmentation(recipe)(image.expand(N, *image.shape).clone())


RECIPES = {
    "affine": AugmentationRecipe(rotate_deg=20, scale=(0.8, 1.2), translate=0.1, affine_prob=0.7),
    "flip": AugmentationRecipe(flip_axes=(0, 1), flip_prob=0.5),
    "intensity": AugmentationRecipe(intensity_shift=0.3, contrast=(0.7, 1.3), gamma=(0.8, 1.25), intensity_prob=0.6),
    "noise": AugmentationRecipe(noise_std=0.2, noise_prob=0.5),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_both_engines_give_the_same_distribution(name):
    recipe, image = RECIPES[name], pattern()
    a, b = per_sample(recipe, image), batched(recipe, image)
    # the mean augmented image and the spread of each pixel agree within sampling noise (N = 400 draws)
    mean_gap = (a.mean(0) - b.mean(0)).abs().mean() / image.abs().mean()
    std_gap = (a.std(0).mean() - b.std(0).mean()).abs() / a.std(0).mean()
    assert mean_gap < 0.08 and std_gap < 0.1, (float(mean_gap), float(std_gap))
    # and the distribution of whole-image brightness matches (two-sample Kolmogorov-Smirnov)
    from scipy.stats import ks_2samp

    assert ks_2samp(a.mean(dim=(1, 2, 3)).numpy(), b.mean(dim=(1, 2, 3)).numpy()).pvalue > 0.001


def test_engines_differ_when_recipes_differ():
    """The comparison above can fail: a different rotation range is detected."""
    image = pattern()
    a = per_sample(RECIPES["affine"], image)
    b = batched(AugmentationRecipe(rotate_deg=60, scale=(0.6, 1.4), translate=0.2, affine_prob=0.7), image)
    assert (a.std(0).mean() - b.std(0).mean()).abs() / a.std(0).mean() > 0.1


def test_both_engines_keep_masks_aligned():
    mask = (pattern() > 1.0).float()
    recipe = AugmentationRecipe(rotate_deg=30, scale=(0.8, 1.2), translate=0.1, affine_prob=1.0, flip_axes=(0, 1),
                                flip_prob=0.5)
    torch.manual_seed(1)
    images, masks = BatchAugmentation(recipe)(mask.expand(16, 1, 32, 32).clone(), mask.expand(16, 1, 32, 32).clone())
    assert ((images > 0.5).float() == masks).float().mean() > 0.97
    from monai.transforms import Compose

    pipeline = Compose(monai_augmentation(recipe, keys=("image", "label"), spatial_dims=2))
    pipeline.set_random_state(seed=1)
    for _ in range(16):
        out = pipeline({"image": mask.clone(), "label": mask.clone()})
        agree = (torch.as_tensor(out["image"]) > 0.5).float() == torch.as_tensor(out["label"]).float()
        assert float(agree.float().mean()) > 0.97
