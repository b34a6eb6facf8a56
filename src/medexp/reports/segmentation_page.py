"""The segmentation page of a tested run: Dice per structure and HD95 with 95% bootstrap intervals over cases; a
per-case table, worst first, with overlays (ground truth outlined, prediction filled; 3D: the slice with the most
foreground) of the worst and best few cases; the test split, or for a run without one the validation of the
checkpoint kept."""
from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medexp.reports import stats
from medexp.reports.html_helpers import figure_tag, img_tag, interval_rows, number_text, rgb_uri, table_html, write_page
from medexp.reports.plots import display_rgb, foreground_slice

PICTURED_CASES = 4  # worst and best segmentation cases with overlays (the other rows are numbers only)
GROUND_TRUTH_RGB, PREDICTION_RGB = (0, 230, 0), (255, 0, 255)


Picture = tuple[np.ndarray, np.ndarray, np.ndarray]  # (H, W, 3) uint8 image, (H, W) truth, (H, W) prediction


def segmentation_picture(image, truth, predicted) -> Picture:
    """What an overlay needs of one case (tensors or arrays: ``(C, *spatial)`` image, ``(*spatial)`` label maps):
    for 3D the slice with the most foreground, the image in display range; small, so a few can be kept."""
    import torch

    image, truth, predicted = (torch.as_tensor(a) for a in (image, truth, predicted))
    if truth.ndim == 3:
        index = foreground_slice(truth, predicted)
        image, truth, predicted = image[..., index], truth[..., index], predicted[..., index]
    return (display_rgb(image.float().cpu().numpy()), truth.cpu().numpy().astype(np.uint8),
            predicted.cpu().numpy().astype(np.uint8))


def _overlay(picture: Picture, size: int) -> str:
    """The image with the prediction filled (magenta) and the ground truth outlined (green) over it, drawn at the
    shown size so the outline stays one pixel wide whatever the image's own size."""
    from PIL import Image

    rgb, truth, predicted = picture
    scale = size / max(truth.shape)
    shape = (max(1, round(truth.shape[1] * scale)), max(1, round(truth.shape[0] * scale)))
    shown = np.asarray(Image.fromarray(rgb).resize(shape, Image.BILINEAR), dtype=np.float32)
    truth, predicted = (np.asarray(Image.fromarray((m > 0).astype(np.uint8)).resize(shape, Image.NEAREST)) > 0
                        for m in (truth, predicted))
    shown[predicted] = 0.55 * shown[predicted] + 0.45 * np.array(PREDICTION_RGB)
    inside = truth.copy()
    inside[1:] &= truth[:-1]
    inside[:-1] &= truth[1:]
    inside[:, 1:] &= truth[:, :-1]
    inside[:, :-1] &= truth[:, 1:]
    shown[truth & ~inside] = GROUND_TRUTH_RGB
    return rgb_uri(shown.astype(np.uint8), size)


@dataclass
class SegmentationReportData:
    """Per-case results of one evaluation pass: Dice (and HD95 where computed) per foreground structure, and the
    pictures of its worst and best few cases."""

    split: str  # "test" | "validation"
    structures: list[str]
    case_ids: list[str]
    dice: np.ndarray  # (cases, structures)
    hd95: np.ndarray | None  # (cases, structures); NaN/inf where a mask is empty; None where not computed
    pictures: dict[str, Picture]  # case id -> overlay parts
    note: str = ""  # which model was evaluated, e.g. the epoch of the checkpoint kept


@dataclass
class SegmentationCases:
    """Collects an evaluation pass case by case: every case's Dice (and HD95) under its id, but pictures of only the
    ``pictured`` worst and best cases so far (by mean Dice), so memory stays bounded however large the split."""

    pictured: int = PICTURED_CASES
    rows: list[tuple[str, np.ndarray, np.ndarray | None]] = field(default_factory=list)
    pictures: list[tuple[float, str, Picture]] = field(default_factory=list)  # by mean Dice, worst first

    def add(self, case_id: str | None, dice: np.ndarray, hd95: np.ndarray | None, image, truth, predicted) -> None:
        case_id = case_id or f"case {len(self.rows)}"
        self.rows.append((case_id, dice, hd95))
        score, kept = float(np.mean(dice)), [p[0] for p in self.pictures]
        if len(kept) < 2 * self.pictured or score < kept[self.pictured - 1] or score > kept[-self.pictured]:
            self.pictures.append((score, case_id, segmentation_picture(image, truth, predicted)))
            self._keep_extremes()

    def _keep_extremes(self) -> None:
        self.pictures.sort(key=lambda p: p[0])
        if len(self.pictures) > 2 * self.pictured:
            self.pictures = self.pictures[: self.pictured] + self.pictures[-self.pictured :]

    @classmethod
    def merged(cls, parts: Sequence[SegmentationCases]) -> SegmentationCases:
        """The parts of all DDP ranks as one; a case twice (a sampler padding the last batch) counts once."""
        whole = cls(parts[0].pictured)
        for part in parts:
            seen = {row[0] for row in whole.rows}
            whole.rows += [row for row in part.rows if row[0] not in seen]
            whole.pictures += [p for p in part.pictures if p[1] not in {q[1] for q in whole.pictures}]
        whole._keep_extremes()
        return whole

    def report(self, split: str, structures: Sequence[str], note: str = "") -> SegmentationReportData:
        with_hd95 = bool(self.rows) and all(row[2] is not None for row in self.rows)
        empty = np.zeros((0, len(structures)))
        return SegmentationReportData(
            split, list(structures), [row[0] for row in self.rows],
            np.array([row[1] for row in self.rows]) if self.rows else empty,
            np.array([row[2] for row in self.rows], dtype=float) if with_hd95 else None,
            {case_id: picture for _, case_id, picture in self.pictures}, note)


def write_segmentation_page(data: SegmentationReportData, folder: Path, title: str, about: str = "") -> Path:
    """Write ``folder/index.html``; return its path."""
    names, cases = data.structures, len(data.case_ids)
    several = len(names) > 1  # one structure: its Dice is the mean, shown once
    dice_name = "mean Dice" if several else "Dice"
    rows = []
    for metric, values in (("Dice", data.dice), ("HD95", data.hd95)):
        if values is None or not cases:
            continue
        labels = [f"{metric} (mean of structures)", *(f"{metric} {name}" for name in names)] if several else [metric]
        draws = stats.with_overall(stats.case_mean_draws(values))[:, : len(labels)]
        rows += list(zip(labels, stats.draw_intervals(draws), strict=True))
    missing = 0 if data.hd95 is None else int((~np.isfinite(data.hd95)).sum())
    sections = [f"<h1>{html.escape(title)}</h1><p>{cases} {data.split} cases"
                + (f" ({html.escape(data.note)})" if data.note else "") + f"; structures: {html.escape(', '.join(names))}."
                " Intervals: 95% percentile bootstrap over cases, 1,000 resamples, seed 0."
                + (f" HD95 counts the cases where both masks hold the structure ({missing} case-structure pairs "
                   "without)." if missing else "") + "</p>",
                f"<h2 id='metrics'>{data.split.capitalize()} metrics</h2>"
                + table_html(["metric", "value", "95% CI"], interval_rows(rows))]
    mean_dice = data.dice.mean(axis=1) if cases else np.zeros(0)
    header = ["case", "overlay", dice_name, *(f"Dice {n}" for n in names if several),
              *(f"HD95 {n}" for n in names if data.hd95 is not None)]
    table = []
    for i in np.argsort(mean_dice, kind="mergesort"):
        picture = data.pictures.get(data.case_ids[i])
        table.append([html.escape(data.case_ids[i]), "" if picture is None else img_tag(_overlay(picture, 96)),
                      number_text(mean_dice[i]), *(number_text(d) for d in data.dice[i] if several),
                      *(number_text(h) for h in (data.hd95[i] if data.hd95 is not None else []))])
    sections.append(f"<h2 id='cases'>Cases, worst first (overlays of the {PICTURED_CASES} worst and best)</h2>"
                    + table_html(header, table))
    shown = sorted((mean_dice[data.case_ids.index(case_id)], case_id) for case_id in data.pictures)
    figures = [figure_tag(_overlay(data.pictures[case_id], 240), f"{html.escape(case_id)}: {dice_name} {score:.3f}")
               for score, case_id in shown]
    sections.append("<h2 id='overlays'>Worst and best cases</h2><p>Ground truth outlined in green, prediction filled "
                    "in magenta (every structure); 3D: the slice with the most ground truth.</p>"
                    f"<div class='cams'>{''.join(figures)}</div>")
    return write_page(folder, title, sections, about)
