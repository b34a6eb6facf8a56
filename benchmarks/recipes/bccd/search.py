"""Recipe search for BCCD blood-cell detection: one `medexp-train` run per recipe, one at a time, on one thread.

Each recipe is a list of overrides; the run's log goes to logs/<recipe>.log and one JSON line (wall time, best
validation and test mAP@0.5 overall and per class) is appended to logs/results.jsonl. Runs write to a scratch folder
(CSV logger, no MLflow), so the search leaves outputs/ alone.

    python benchmarks/recipes/bccd/search.py r01 [r02 ...] [--data /work/shared/data/BCCD] [--threads 1]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SCRATCH = Path(os.environ.get("BCCD_SCRATCH", "/tmp/bccd"))
QUIET = ["logger=csv", "callbacks.progress_bar.refresh_rate=0"]

# r01-r03 ran before experiment=bccd_cells existed: BCCD as a MONAI detection datalist written from the VOC XMLs
# (zero-area boxes left out), read with data=detection_datalist
DATALIST = ["data=detection_datalist", "model=retinanet", "task=detection", f"data.root={SCRATCH}",
            "data.datalist.path=bccd_monai.json", "data.box_mode=xyxy", "data.box_axes=xy", "data.num_classes=3",
            "data.class_names=[RBC,WBC,Platelets]", "data.in_channels=3", "data.spatial_dims=2"]
HALF_SIZE = ["+data.preprocessing.resize=[240,320]", "data.batch_size=4", "data.rotate90_prob=0.5",
             "augmentation=light", "augmentation.rotate_deg=0", "augmentation.translate=0",
             "augmentation.flip_axes=[0,1]", "augmentation.scale=[0.8,1.2]", "augmentation.contrast=[0.8,1.2]"]
R18_STRIDE8 = ["model.backbone.layers=[2,2,2,2]", "model.backbone.block_inplanes=[32,64,128,256]",
               "model.returned_layers=[2,3]", "model.anchor_sizes=[20,32]"]
TRAINING = ["task.nms_thresh=0.5", "task.score_thresh=0.05", "task.hard_negative.batch_size_per_image=256",
            "task.monitor=val/ap_iou50", "optimizer=adamw", "optimizer.lr=2e-3", "optimizer.weight_decay=1e-4",
            "scheduler=cosine"]

RECIPES: dict[str, list[str]] = {
    # half-size whole images (240x320), ResNet-18 layout at half width, pyramid at strides 8/16/32; stopped at
    # epoch 15 of 30 (the shared CPU gave it a third of a core): val mAP@0.5 0.48, 0.62, 0.79, 0.79, 0.83 at
    # epochs 3, 6, 9, 12, 15 (logs/r01_metrics.csv)
    "r01": DATALIST + HALF_SIZE + R18_STRIDE8 + TRAINING + ["trainer.max_epochs=30",
                                                              "trainer.check_val_every_n_epoch=3"],
    # r01 as experiment=bccd_cells (VOC read directly), 20 epochs: cosine decay done before the time runs out
    "r02": ["experiment=bccd_cells", "data.root={data}"],
}


def write_monai_datalist(voc: Path, path: Path) -> None:
    """BCCD's VOC XMLs as a MONAI detection datalist (column-first xyxy pixel boxes; zero-area boxes left out)."""
    import xml.etree.ElementTree as ET

    names, content = ["RBC", "WBC", "Platelets"], {}
    for split, key in (("train", "training"), ("val", "validation"), ("test", "test")):
        cases = []
        for stem in (voc / "ImageSets/Main" / f"{split}.txt").read_text().split():
            boxes, labels = [], []
            for obj in ET.parse(voc / "Annotations" / f"{stem}.xml").getroot().iter("object"):
                box = [float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
                if box[2] > box[0] and box[3] > box[1]:
                    boxes.append(box)
                    labels.append(names.index(obj.find("name").text))
            cases.append({"image": str(voc / "JPEGImages" / f"{stem}.jpg"), "box": boxes, "label": labels})
        content[key] = cases
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def metrics_of(run_dir: Path) -> dict:
    """Best validation and final test values from the CSV logger's metrics.csv."""
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    val = [(float(r["val/ap_iou50"]), int(r["epoch"])) for r in rows if r.get("val/ap_iou50")]
    test = {k: float(v) for r in rows for k, v in r.items() if k.startswith("test/ap_iou50") and v}
    return {"best_val_ap50": max(val, default=(None, None))[0], "best_epoch": max(val, default=(None, None))[1],
            **{k.replace("test/", "test_"): round(v, 4) for k, v in test.items()}}


def run(name: str, data: str, threads: int) -> dict:
    if any("bccd_monai.json" in o for o in RECIPES[name]):
        write_monai_datalist(Path(data), SCRATCH / "bccd_monai.json")
    overrides = [o.format(data=data) for o in RECIPES[name]]
    run_dir = SCRATCH / "runs" / name
    log = HERE / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MEDEXP_OUTPUT_ROOT": str(SCRATCH / "out")}
    command = [str(REPO / ".venv/bin/medexp-train"), *overrides, *QUIET, f"hydra.run.dir={run_dir}"]
    start = time.time()
    with open(log, "w") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    result = {"recipe": name, "rc": code, "wall_s": round(time.time() - start), "threads": threads}
    if (run_dir / "csv" / "metrics.csv").is_file():  # a stopped run still tells how far validation got
        result.update(metrics_of(run_dir))
    with open(HERE / "logs" / "results.jsonl", "a") as handle:
        handle.write(json.dumps(result) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipes", nargs="+", choices=sorted(RECIPES))
    parser.add_argument("--data", default="/work/shared/data/BCCD")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for name in args.recipes:
        print(json.dumps(run(name, args.data, args.threads)), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
