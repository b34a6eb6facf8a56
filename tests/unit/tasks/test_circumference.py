"""The head circumference of a mask: an ellipse of known axes, anisotropic pixels, the largest region only, and
HC18's own masks against its reference circumferences."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medexp.errors import ConfigError
from medexp.tasks.circumference import CircumferenceTable, circumference_mm, ellipse_perimeter

HC18 = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "HC18"


def ellipse(shape, centre, a, b) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return ((rows - centre[0]) / a) ** 2 + ((cols - centre[1]) / b) ** 2 <= 1


def test_ramanujan_is_exact_for_a_circle():
    assert ellipse_perimeter(5, 5) == pytest.approx(2 * math.pi * 5)


def test_the_fitted_ellipse_has_the_drawn_perimeter_in_mm():
    mask = ellipse((200, 300), (100, 150), 60, 110)
    assert circumference_mm(mask, (0.1, 0.1)) == pytest.approx(0.1 * ellipse_perimeter(60, 110), rel=0.02)
    # rows stored at twice the column spacing: an ellipse of 30 rows x 110 columns is 60 x 110 in mm units
    squeezed = ellipse((200, 300), (100, 150), 30, 110)
    assert circumference_mm(squeezed, (0.2, 0.1)) == pytest.approx(0.1 * ellipse_perimeter(60, 110), rel=0.02)


def test_specks_beside_the_head_are_ignored_and_an_empty_mask_is_nan():
    mask = ellipse((200, 300), (100, 150), 60, 110)
    mask[5:8, 5:8] = True
    assert circumference_mm(mask, (1, 1)) == pytest.approx(ellipse_perimeter(60, 110), rel=0.02)
    assert math.isnan(circumference_mm(np.zeros((10, 10), bool), (1, 1)))


def test_the_table_scales_the_pixel_size_to_the_mask_and_a_missed_head_costs_the_whole_circumference(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((200, 300), np.uint8)).save(tmp_path / "images" / "001_HC.png")
    reference = 0.1 * ellipse_perimeter(60, 110)
    (tmp_path / "sizes.csv").write_text(f"filename,pixel size(mm),head circumference (mm)\n001_HC.png,0.1,{reference}\n")
    table = CircumferenceTable(str(tmp_path / "sizes.csv"), "images")
    small = ellipse((50, 75), (25, 37.5), 15, 27.5)  # the same head at a quarter of the stored size
    assert table.spacing("001_HC", small.shape) == pytest.approx([0.4, 0.4])
    assert table.error_mm("001_HC", small) < 0.03 * reference
    assert table.error_mm("001_HC", np.zeros((50, 75), bool)) == pytest.approx(reference)
    assert table.error_mm("not_listed", small) is None
    with pytest.raises(ConfigError, match="does not exist"):
        CircumferenceTable(str(tmp_path / "missing.csv"))


@pytest.mark.skipif(not HC18.is_dir(), reason="needs ../shared/data/HC18")
def test_hc18_masks_give_their_reference_circumference():
    table = CircumferenceTable(str(HC18 / "training_set_pixel_size_and_HC.csv"), "training_set")
    for case in ("000_HC", "010_2HC", "805_HC"):
        mask = np.asarray(Image.open(HC18 / "training_set" / f"{case}_Annotation.png").convert("L")) > 127
        reference = table.references[case].circumference
        assert table.error_mm(case, mask) < 0.015 * reference  # the filled mask's rim: about 1% (the README)
