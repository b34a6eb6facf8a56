"""Two sets in forms no recipe or planner rule was written for, derived from ``../shared/data``, to run the planner on:

- ``cells``: every BCCD box cropped (10% margin) as an RGB JPEG of its own size (27-379 px), 3 classes 11x
  imbalanced, listed in ``labels.csv`` with the blood image as patient (``data=image_table``);
- ``photos``: 400 HC18 images tinted to RGB, cropped to 75-100% per axis and scaled to 332-1200 px wide JPEGs, their
  filled-ellipse masks saved as JPEG (lossy: not 0/255), and the user's own split by examination in ``split.csv``
  (``data=folder_photos`` with a CSV datalist), as a Kvasir-like polyp set comes.

    python benchmarks/unseen_sets.py --shared ../shared/data --out /tmp/unseen_data
    medexp-plan data=image_table data.table=/tmp/unseen_data/cells/labels.csv data.patient_column=patient budget=10m
    medexp-plan data=folder_photos data.root=/tmp/unseen_data/photos '~data.datalist' \\
        '+data.datalist={kind: csv, path: split.csv}' budget=10m

Figures: docs/planning.md ("Sets no rule was written for").
"""
from __future__ import annotations

import argparse
import csv
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


def cells(bccd: Path, out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    rows = []
    for xml in sorted((bccd / "Annotations").glob("*.xml")):
        image = Image.open(bccd / "JPEGImages" / f"{xml.stem}.jpg").convert("RGB")
        for index, obj in enumerate(ET.parse(xml).getroot().iter("object")):
            name = obj.find("name").text.strip()
            box = obj.find("bndbox")
            x0, y0, x1, y1 = (int(float(box.find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax"))
            if x1 - x0 < 4 or y1 - y0 < 4:  # BCCD's two zero-area boxes
                continue
            mx, my = (x1 - x0) // 10, (y1 - y0) // 10
            crop = image.crop((max(0, x0 - mx), max(0, y0 - my), min(image.width, x1 + mx), min(image.height, y1 + my)))
            path = Path(name) / f"{xml.stem}_{index}.jpg"
            (out / name).mkdir(parents=True, exist_ok=True)
            crop.save(out / path, quality=90)
            rows.append({"image": str(path), "label": name, "patient": xml.stem})
            counts[name] = counts.get(name, 0) + 1
    write_csv(out / "labels.csv", sorted(rows, key=lambda row: row["image"]))  # as a folder listing orders them
    return counts


def photos(hc18: Path, out: Path, count: int = 400, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    images = sorted((hc18 / "training_set").glob("*_HC.png"))[:count]
    examination = {p: re.match(r"^(\d+)_", p.name).group(1) for p in images}
    groups = sorted(set(examination.values()))
    rng.shuffle(groups)
    split = {g: "test" if i < 0.15 * len(groups) else "val" if i < 0.3 * len(groups) else "train"
             for i, g in enumerate(groups)}
    rows = []
    for path in images:
        gray = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        outline = np.asarray(Image.open(path.with_name(f"{path.stem}_Annotation.png")).convert("L")) > 127
        mask = ndimage.binary_fill_holes(outline)
        height, width = gray.shape
        crop_h, crop_w = int(height * rng.uniform(0.75, 1.0)), int(width * rng.uniform(0.75, 1.0))
        y0, x0 = rng.randint(0, height - crop_h), rng.randint(0, width - crop_w)
        window = (slice(y0, y0 + crop_h), slice(x0, x0 + crop_w))
        rgb = np.stack([gray, gray * 0.8 + 20, gray * 0.6 + 40], -1)[window].clip(0, 255).astype(np.uint8)
        new_w = rng.randint(332, 1200)
        size = (new_w, round(crop_h * new_w / crop_w))
        name = path.stem.removesuffix("_HC")
        Image.fromarray(rgb).resize(size, Image.BILINEAR).save(out / "images" / f"{name}.jpg", quality=85)
        Image.fromarray((mask[window] * 255).astype(np.uint8)).resize(size, Image.BILINEAR).save(
            out / "masks" / f"{name}.jpg", quality=75)
        rows.append({"image": f"images/{name}.jpg", "label": f"masks/{name}.jpg", "split": split[examination[path]]})
    write_csv(out / "split.csv", rows)
    return {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/unseen_data"))
    args = parser.parse_args()
    print("cells:", cells(args.shared / "BCCD", args.out / "cells"))
    print("photos:", photos(args.shared / "HC18", args.out / "photos"))


if __name__ == "__main__":
    main()
