"""The head circumference of a segmented fetal head, HC18's own measure: an ellipse fitted to the predicted mask,
its perimeter in mm, compared with the reference circumference of the image.

The ellipse is fitted by moments (the covariance of the mask's pixel positions, in mm: a filled ellipse of semi-axes
a, b has variances a^2/4 and b^2/4 along its axes) to the largest connected region, and its perimeter is Ramanujan's
approximation, as the challenge computes it from its fitted ellipse parameters. Pixel sizes differ per image (HC18:
0.05-0.33 mm): a table names each image's pixel size and reference circumference; the network's masks are at the
planned resolution, so the pixel size is scaled by the stored size over the mask's size on each axis.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medexp.errors import ConfigError, DataError


def ellipse_perimeter(a: float, b: float) -> float:
    """Ramanujan's approximation of the perimeter of an ellipse with semi-axes ``a`` and ``b``."""
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


def circumference_mm(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """The perimeter (mm) of the ellipse fitted to the largest region of a 2D ``mask`` with pixel ``spacing``
    (mm per row, per column); NaN when the mask is empty."""
    from scipy import ndimage

    regions, count = ndimage.label(mask)
    if count == 0:
        return float("nan")
    largest = np.argmax(np.bincount(regions.ravel())[1:]) + 1
    points = np.argwhere(regions == largest) * np.asarray(spacing, dtype=float)
    if len(points) < 3:
        return float("nan")
    variances = np.linalg.eigvalsh(np.cov(points.T))
    a, b = (2 * math.sqrt(max(v, 0.0)) for v in variances)
    return ellipse_perimeter(a, b)


@dataclass(frozen=True)
class Reference:
    pixel_size: float  # mm per stored pixel
    circumference: float  # mm
    image: Path


class CircumferenceTable:
    """Each image's pixel size and reference circumference, from a CSV (HC18's
    ``training_set_pixel_size_and_HC.csv``), looked up by case id (the image's file stem); the images' stored
    sizes are read from their headers when first asked."""

    def __init__(self, table: str, images: str = ".", image_column: str = "filename",
                 pixel_size_column: str = "pixel size(mm)", reference_column: str = "head circumference (mm)"):
        path = Path(table)
        if not path.is_file():
            raise ConfigError(f"data.circumference.table={table} does not exist: give the CSV of pixel sizes and "
                              "reference circumferences (HC18: training_set_pixel_size_and_HC.csv)")
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
        missing = [c for c in (image_column, pixel_size_column, reference_column) if rows and c not in rows[0]]
        if not rows or missing:
            raise DataError(f"{path} lacks column(s) {missing or 'and rows'}: its columns are "
                            f"{list(rows[0]) if rows else []}; set data.circumference.*_column")
        folder = path.parent / images
        self.references = {Path(row[image_column]).stem: Reference(float(row[pixel_size_column]),
                                                                   float(row[reference_column]),
                                                                   folder / row[image_column]) for row in rows}
        self._shapes: dict[str, tuple[int, int]] = {}

    def spacing(self, case_id: str, mask_shape: Sequence[int]) -> list[float] | None:
        """mm per pixel of a mask of ``mask_shape`` made from the case's image; None for a case not in the table."""
        reference = self.references.get(case_id)
        if reference is None:
            return None
        if case_id not in self._shapes:
            from PIL import Image

            with Image.open(reference.image) as image:  # the header only: no pixels decoded
                self._shapes[case_id] = (image.height, image.width)
        return [reference.pixel_size * stored / size for stored, size in zip(self._shapes[case_id], mask_shape,
                                                                             strict=True)]

    def error_mm(self, case_id: str, mask: np.ndarray) -> float | None:
        """|fitted circumference - reference| in mm; a mask with no head misses the whole circumference; None for
        a case the table does not name."""
        spacing = self.spacing(case_id, mask.shape)
        if spacing is None:
            return None
        measured = circumference_mm(mask, spacing)
        reference = self.references[case_id].circumference
        return reference if math.isnan(measured) else abs(measured - reference)
