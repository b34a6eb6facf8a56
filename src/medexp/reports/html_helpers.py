"""``report/index.html``: one self-contained page per run (figures inlined as base64 PNG, no scripts, no network)
that opens offline and travels as one MLflow artifact. Every page is built from the HTML helpers here; the pages
themselves are ``classification_page``, ``segmentation_page``, ``detection_page`` (each written by its task,
``BaseTask.write_test_page`` / ``write_test_report``) and ``sweep_page`` (a sweep's parent run).
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from medexp.reports import stats

STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px} table{border-collapse:collapse;margin:.5em 0} "
          "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px} td img{display:block} body>img{max-width:100%} "
          ".cams{display:flex;flex-wrap:wrap;gap:1em} figcaption{font-size:12px;max-width:240px}")


def png_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def png_file_uri(path: Path) -> str:
    """A PNG the run already wrote (FROC curve, drawn detections), inlined."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def rgb_uri(rgb: np.ndarray, size: int) -> str:
    """An ``(H, W, 3)`` uint8 picture as an inline PNG, its longer side ``size`` pixels (nearest neighbour: masks
    stay crisp); drawn with PIL, not matplotlib: 40 figures would cost the run seconds."""
    from PIL import Image

    scale = size / max(rgb.shape[:2])
    picture = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    picture = picture.resize((max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def thumbnail_uri(image: np.ndarray, cam: np.ndarray | None = None, size: int = 84) -> str:
    """A stored image (``(C, H, W)``; a volume ``(C, D, H, W)`` shows its middle slice) as an inline PNG, the
    Grad-CAM map blended over it if given. 8-bit images show as stored, others stretched from min to max."""
    from matplotlib import colormaps

    if image.ndim == 4:
        image = image[:, image.shape[1] // 2]
        cam = None if cam is None else cam[cam.shape[0] // 2]
    if image.dtype != np.uint8:
        low, high = float(image.min()), float(image.max())
        image = (image.astype(np.float32) - low) * (255 / max(high - low, 1e-6))

    pixels = np.clip(image, 0, 255).astype(np.uint8)
    rgb = np.repeat(pixels, 3, axis=0) if pixels.shape[0] == 1 else pixels[:3]
    rgb = np.moveaxis(rgb, 0, -1).astype(np.float32)
    if cam is not None:
        heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
        rgb = 0.6 * rgb + 0.4 * heat
    return rgb_uri(rgb.astype(np.uint8), size)


def img_tag(uri: str) -> str:
    return f"<img src='{uri}'>"


def figure_tag(uri: str, caption: str) -> str:
    return f"<figure>{img_tag(uri)}<figcaption>{caption}</figcaption></figure>"


def number_text(value: float | None) -> str:
    return f"{value:.4f}" if value is not None and np.isfinite(value) else "n/a"


def table_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def interval_rows(named: list[tuple[str, stats.Interval]]) -> list[list[str]]:
    return [[html.escape(name), number_text(i.value), f"{number_text(i.low)} - {number_text(i.high)}"] for name, i in named]


def write_page(folder: Path, title: str, sections: list[str], about: str = "") -> Path:
    """``folder/index.html``: the sections under one title (``about``, the run's model, checkpoint and settings,
    right below it), styles inline, nothing to fetch."""
    if about:
        sections = [sections[0], f"<p class='about'>{html.escape(about)}</p>", *sections[1:]]
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "index.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")
    return page
