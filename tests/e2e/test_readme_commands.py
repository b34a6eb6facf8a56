"""The README's box-format commands compose as written and read their files (they once failed with
"data.datalist.path is not a config key": a dict on the command line merges into VOC's datalist)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image

from medexp.data.datalist import build_datalist

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_command(marker: str) -> list[str]:
    """The backticked command of the README that holds ``marker``, as the shell would split it."""
    text = " ".join(README.read_text().split())  # commands wrap across lines
    (command,) = [c for c in re.findall(r"`([^`]+)`", text) if marker in c]
    return shlex.split(command)


def test_the_readme_coco_command_reads_a_coco_file(tmp_path, make_cfg):
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30)).save(tmp_path / "images" / name)
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 4, 10, 8], "iscrowd": 0}],
        "categories": [{"id": 7, "name": "cell"}]}))
    overrides = [o.replace("<folder>", "images") for o in readme_command("kind: coco")]
    assert overrides[0] == "data=voc"
    cfg = make_cfg("task=detection", "model=retinanet", *overrides, f"data.root={tmp_path}")
    records = build_datalist(OmegaConf.to_container(cfg.data.datalist, resolve=True), cfg.data.root)
    boxes = {Path(r["image"]).name: r["box"] for r in records}
    assert boxes == {"a.png": [[5.0, 4.0, 10.0, 8.0]], "b.png": []}


def test_the_readme_masks_command_composes(make_cfg, tmp_path):
    overrides = [o.replace("{...}", "{kind: folder, image_glob: 'images/*', label_pattern: 'masks/{stem}.png'}")
                 for o in readme_command("kind: masks")]
    cfg = make_cfg("task=detection", "model=retinanet", *overrides, f"data.root={tmp_path}")
    assert OmegaConf.to_container(cfg.data.datalist)["kind"] == "masks"
    assert "difficult" not in cfg.data.datalist
