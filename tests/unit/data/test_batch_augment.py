"""The batched augmentation engine: identity when off, exact flips, masks and detection boxes that stay aligned,
recipe ranges."""
from __future__ import annotations

import pytest
import torch

from medexp.data.augmentation import AugmentationRecipe
from medexp.data.batch_augment import ANGLES, DRAWS, BatchAugmentation, BoxBatchAugmentation
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


def test_rotation_of_a_non_square_image_turns_pixels_without_shear():
    """A spot 8 px right of the centre of a 20 x 40 image, turned by 90 degrees, lands 8 px above or below it (an
    affine in [-1, 1] coordinates would land it 4 px away: 8 * 20 / 40)."""
    image = torch.zeros(1, 1, 20, 40)
    image[0, 0, 9:11, 27:29] = 1.0  # centred on (9.5, 27.5): the image centre is (9.5, 19.5)
    engine = BatchAugmentation(AugmentationRecipe(rotate_deg=90, affine_prob=1.0))
    draws = torch.zeros(1, DRAWS)
    draws[0, ANGLES] = 1.0  # the top of [-90, 90]
    turned, _, _ = engine.apply(image, draws)
    weights = turned[0, 0] / turned.sum()
    rows, cols = torch.meshgrid(torch.arange(20.0), torch.arange(40.0), indexing="ij")
    assert float((weights * cols).sum()) == pytest.approx(19.5, abs=0.3)
    assert abs(float((weights * rows).sum()) - 9.5) == pytest.approx(8.0, abs=0.3)


def test_batched_engine_rejects_other_ranks():
    with pytest.raises(ValueError, match="2D or 3D batches"):
        BatchAugmentation(AugmentationRecipe(flip_axes=(0,), flip_prob=1.0))(torch.zeros(1, 4, 4))


# -- detection: boxes following their images ---------------------------------------------------------------------
def box_cases(shape: tuple[int, ...], count: int, seed: int = 0) -> tuple[list, list, list]:
    """``count`` images of ``shape`` (spatial) holding one filled box each, off-centre and of its own size, with
    the box in standard mode (corners on the array axes) and label i."""
    generator = torch.Generator().manual_seed(seed)
    images, boxes = [], []
    for _ in range(count):
        low = [int(torch.randint(s // 4, s // 2, (1,), generator=generator)) for s in shape]
        size = [int(torch.randint(s // 8, s // 4, (1,), generator=generator)) for s in shape]
        high = [lo + extent for lo, extent in zip(low, size, strict=True)]
        image = torch.zeros(1, *shape)
        image[(0, *(slice(lo, hi) for lo, hi in zip(low, high, strict=True)))] = 1
        images.append(image)
        boxes.append(torch.tensor([[*low, *high]], dtype=torch.float32))
    return images, boxes, [torch.tensor([i]) for i in range(count)]


def drawn_box(image: torch.Tensor) -> torch.Tensor:
    """The bounding box (standard mode) of the pixels of channel 0 above one half."""
    where = torch.nonzero(image[0] > 0.5)
    return torch.cat([where.amin(0), where.amax(0) + 1]).float()


@pytest.mark.parametrize("shape", [(24, 32), (12, 16, 20)])
def test_flipped_boxes_are_exact(shape):
    """A flip on axis a maps a box to ``S_a - high, S_a - low`` exactly; flipping twice gives the box back."""
    dims = len(shape)
    images, boxes, labels = box_cases(shape, 4)
    off_grid = [box + 0.3 for box in boxes]  # resized images carry fractional corners
    for axis in range(dims):
        flip = BoxBatchAugmentation(AugmentationRecipe(flip_axes=(axis,), flip_prob=1.0))
        flipped_images, flipped, flipped_labels = flip(images, boxes, labels)
        assert all(map(torch.equal, flipped_labels, labels))
        _, flipped_off_grid, _ = flip(images, off_grid, labels)
        for image, box, before, box_off_grid, off_grid_before in zip(flipped_images, flipped, boxes,
                                                                     flipped_off_grid, off_grid, strict=True):
            for moved, original in ((box, before), (box_off_grid, off_grid_before)):
                expected = original.clone()
                expected[:, axis] = shape[axis] - original[:, axis + dims]
                expected[:, axis + dims] = shape[axis] - original[:, axis]
                assert torch.equal(moved, expected), (axis, moved, expected)
            assert torch.equal(drawn_box(image), box[0])
        _, back, _ = flip(flipped_images, flipped, flipped_labels)
        assert all(map(torch.equal, back, boxes))


@pytest.mark.parametrize("shape", [(40, 56), (20, 24, 28)])
def test_boxes_follow_zoom_shift_and_flips_to_a_pixel(shape):
    """Each image's box, augmented with it, is the bounding box of its augmented filled box to a pixel."""
    torch.manual_seed(0)
    recipe = AugmentationRecipe(scale=(0.75, 1.3), translate=0.08, affine_prob=1.0, flip_axes=(0, 1, 2),
                                flip_prob=0.5, intensity_shift=0.1, intensity_prob=0.5)
    images, boxes, labels = box_cases(shape, 12)
    out_images, out_boxes, out_labels = BoxBatchAugmentation(recipe)(images, boxes, labels)
    assert [len(box) for box in out_boxes] == [1] * 12 and all(map(torch.equal, out_labels, labels))
    assert not all(torch.equal(a, b) for a, b in zip(out_boxes, boxes, strict=True))  # the boxes did move
    for image, (box,) in zip(out_images, out_boxes, strict=True):
        assert (box - drawn_box(image)).abs().max() <= 1, (box, drawn_box(image))


@pytest.mark.parametrize("shape", [(40, 40), (24, 24, 24)])
def test_rotated_boxes_hold_the_rotated_object(shape):
    """A rotation by any angle moves the box to the bounding box of its turned corners: it holds the turned
    object (to a pixel: bilinear edges) and is larger than it, as any axis-aligned box of a turned object is."""
    torch.manual_seed(0)
    images, boxes, labels = box_cases(shape, 12)
    recipe = AugmentationRecipe(rotate_deg=40, affine_prob=1.0)
    out_images, out_boxes, _ = BoxBatchAugmentation(recipe)(images, boxes, labels)
    dims, larger = len(shape), 0
    for image, (box,) in zip(out_images, out_boxes, strict=True):
        drawn = drawn_box(image)
        assert (box[:dims] <= drawn[:dims] + 1).all() and (box[dims:] >= drawn[dims:] - 1).all(), (box, drawn)
        larger += bool((box[dims:] - box[:dims]).prod() > (drawn[dims:] - drawn[:dims]).prod())
    assert larger >= 10


def test_boxes_pushed_out_of_the_image_are_dropped_with_their_labels():
    """A zoom by 2 about the centre of a 40 px image maps x to 2x - 20: the corner box leaves the image, one keeps
    a tenth of itself inside (dropped: under MIN_VISIBLE_FRACTION), one 44 % (kept, clipped), the central one all."""
    boxes = torch.tensor([[0, 0, 5, 5], [6, 6, 12, 12], [8, 8, 14, 14], [15, 16, 25, 24]], dtype=torch.float32)
    zoom = BoxBatchAugmentation(AugmentationRecipe(scale=(2.0, 2.0), affine_prob=1.0))
    _, (moved,), (labels,) = zoom([torch.zeros(1, 40, 40)], [boxes], [torch.tensor([0, 1, 2, 3])])
    assert labels.tolist() == [2, 3]
    assert torch.allclose(moved, torch.tensor([[0.0, 0.0, 8.0, 8.0], [10.0, 12.0, 30.0, 28.0]]), atol=1e-4)


def test_one_draw_for_a_batch_of_mixed_shapes(monkeypatch):
    """Images of different shapes (quarter-turned or whole images) are augmented per shape, from the batch's one
    random draw, each with its own size: a flip maps each box on its own image's extent."""
    images, boxes, labels = box_cases((24, 32), 3)
    turned, turned_boxes, turned_labels = box_cases((32, 24), 2, seed=1)
    draws = []
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: draws.append(a) or real_rand(*a, **k))
    flip = BoxBatchAugmentation(AugmentationRecipe(flip_axes=(1,), flip_prob=1.0, intensity_shift=0.1,
                                                   intensity_prob=1.0, noise_std=0.1, noise_prob=1.0))
    order = [0, 3, 1, 4, 2]  # shapes interleaved
    all_images, all_boxes = images + turned, boxes + turned_boxes
    out_images, out_boxes, out_labels = flip([all_images[i] for i in order], [all_boxes[i] for i in order],
                                             [(labels + turned_labels)[i] for i in order])
    assert len(draws) == 1 and draws[0][0] == 5
    for index, image, box in zip(order, out_images, out_boxes, strict=True):
        width = all_images[index].shape[-1]
        before = all_boxes[index]
        assert image.shape == all_images[index].shape
        assert torch.allclose(box[:, [1, 3]], width - before[:, [3, 1]], atol=1e-4)
        assert torch.equal(box[:, [0, 2]], before[:, [0, 2]])
    assert [label.tolist() for label in out_labels] == [[0], [0], [1], [1], [2]]


def test_intensity_steps_leave_boxes_alone():
    images, boxes, labels = box_cases((24, 32), 4)
    recipe = AugmentationRecipe(intensity_shift=0.5, contrast=(0.5, 1.5), intensity_prob=1.0)
    out_images, out_boxes, out_labels = BoxBatchAugmentation(recipe)(images, boxes, labels)
    assert all(map(torch.equal, out_boxes, boxes)) and all(map(torch.equal, out_labels, labels))
    assert not any(torch.equal(a, b) for a, b in zip(out_images, images, strict=True))
