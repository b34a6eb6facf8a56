"""Masks as files store them: each file's encoding found on its own (class indices, 0/255, one foreground value,
palettes whose indices are not the classes), multi-frame files and non-finite images refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medexp.data.io import LoadCased
from medexp.errors import DataError

SHAPE = (24, 30)


def truth() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[5:15, 8:20] = True
    return mask


def three_classes_png(path) -> np.ndarray:
    """A class-index mask of classes 0, 1 and 2, written to ``path``; returns it."""
    classes = truth().astype(np.uint8)
    classes[18:22, 2:6] = 2
    Image.fromarray(classes).save(path)
    return classes


def read_label(tmp_path, mask_file, **settings) -> np.ndarray:
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((*SHAPE, 3), np.uint8)).save(image)
    return LoadCased(**settings)({"image": str(image), "label": str(mask_file)})["label"][0].numpy()


def palette_png(path, indices: np.ndarray, colours: dict[int, tuple[int, int, int]]):
    palette = np.zeros((256, 3), np.uint8)
    palette[:] = (10, 200, 30)  # entries no pixel uses
    for index, colour in colours.items():
        palette[index] = colour
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(palette.ravel().tolist())
    image.save(path)
    return path


@pytest.mark.parametrize("foreground", [1, 2, 7, 255])
def test_a_two_class_mask_of_0_and_one_value_is_read_as_that_value_foreground(tmp_path, foreground):
    path = tmp_path / "mask.png"
    Image.fromarray((truth() * foreground).astype(np.uint8)).save(path)
    np.testing.assert_array_equal(read_label(tmp_path, path, num_classes=2), truth())


def test_a_folder_mixing_0_1_and_0_255_masks_reads_both(tmp_path):
    for name, scale in (("indices.png", 1), ("white.png", 255)):
        Image.fromarray((truth() * scale).astype(np.uint8)).save(tmp_path / name)
        np.testing.assert_array_equal(read_label(tmp_path, tmp_path / name, num_classes=2), truth())


@pytest.mark.parametrize("indices,colours", [
    ((3, 5), {3: (0, 0, 0), 5: (200, 0, 0)}),        # coloured palette: background black at 3, red lesion at 5
    ((1, 0), {1: (0, 0, 0), 0: (90, 40, 0)}),        # foreground at index 0, background black at index 1
])
def test_a_coloured_palette_mask_is_read_by_its_colours(tmp_path, indices, colours):
    background, foreground = indices
    path = palette_png(tmp_path / "mask.png", np.where(truth(), foreground, background), colours)
    np.testing.assert_array_equal(read_label(tmp_path, path, num_classes=2), truth())


def test_a_palette_of_class_indices_stays_class_indices_with_more_classes(tmp_path):
    classes = truth().astype(np.uint8)
    classes[18:22, 2:6] = 2
    path = palette_png(tmp_path / "mask.png", classes, {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0)})
    np.testing.assert_array_equal(read_label(tmp_path, path, num_classes=3), classes)


def test_class_index_masks_are_read_as_classes(tmp_path):
    path = tmp_path / "mask.png"
    classes = three_classes_png(path)
    np.testing.assert_array_equal(read_label(tmp_path, path, num_classes=3), classes)


def test_a_two_class_mask_holding_three_classes_is_refused_in_one_line(tmp_path):
    path = tmp_path / "mask.png"
    three_classes_png(path)
    with pytest.raises(DataError, match=r"mask .*mask.png holds values 0, 1, 2, not a two-class mask.*"
                                        "data.num_classes"):
        read_label(tmp_path, path, num_classes=2)


def test_label_values_still_map_stored_values_exactly(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.where(truth(), 40, 90).astype(np.uint8)).save(path)  # background stored as 90
    np.testing.assert_array_equal(read_label(tmp_path, path, num_classes=2, label_values=[90, 40]), truth())


def test_a_multi_frame_tiff_is_refused_in_one_line_not_read_as_its_first_frame(tmp_path):
    from medexp.data.io import read_image

    frames = [Image.fromarray(np.full(SHAPE, value, np.uint8)) for value in (10, 120, 240)]
    stack = tmp_path / "stack.tif"
    frames[0].save(stack, save_all=True, append_images=frames[1:])
    assert Image.open(stack).n_frames == 3
    with pytest.raises(DataError, match=r"cannot read image .*stack.tif: it holds 3 frames .*one 2D image per file"):
        read_image(str(stack))
    with pytest.raises(DataError, match="it holds 3 frames"):
        LoadCased(label_key=None, mask_keys=())({"image": str(stack)})


def test_an_image_with_nan_pixels_is_refused_for_training_and_prediction(tmp_path):
    pixels = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    pixels[3, 4] = np.nan
    image = tmp_path / "scan.tif"
    Image.fromarray(pixels).save(image)  # a float (mode F) TIFF
    with pytest.raises(DataError, match=r"image .*scan.tif holds 1 NaN or infinite pixel value\(s\)"):
        LoadCased(label_key=None, mask_keys=())({"image": str(image)})
