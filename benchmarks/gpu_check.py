"""The GPU figures of issue 25 item 5 in one run, ending with one JSON line (also written to $OUT/gpu_check.json
when OUT is set). ``benchmarks/gpu_check.sh`` starts it on a bare GPU machine; ``DEVICE=cpu SMALL=1`` is the
dry run on a CPU (a 1,024-image subset, one epoch, tiny 3D volumes).

  classification  medexp-train (default logger: MLflow) against the plain resident loop (``plain_loop.py``), the
                  same precision and augmentation on both sides: seed CNN and ResNet-18 (28 px stem), 32 and
                  bf16-mixed, augmentation none and light. ``throughput_ratio`` is training images/s, medexp's
                  over plain's (targets: >= 0.85 for the seed CNN; ResNet-18's bf16 images/s >= its fp32's).
  kernels         kernels one training step launches (torch.profiler), both sides, fp32, none and light.
  dynunet_3d      medexp-train with DynUNet on generated Decathlon-style volumes (random patches, bf16-mixed),
                  loader workers 0 against ``WORKERS``: patches/s and seconds to the first step.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.fixtures_data writes the 3D volumes
from bench_train import bench, timed  # noqa: E402

DEVICE = os.environ.get("DEVICE", "cuda")
SMALL = os.environ.get("SMALL") == "1"
NPZ = Path(os.environ.get("NPZ", HERE.parent / ".gpu_site" / "data" / "pneumoniamnist.npz"))
WORKERS = int(os.environ.get("WORKERS", "2" if SMALL else "8"))
EPOCHS = {"cnn": 1, "resnet18": 1} if SMALL else {"cnn": 20, "resnet18": 3}
# 3D: cases, volume shape, patch, epochs
VOLUMES = (4, (32, 32, 24), 16, 1) if SMALL else (32, (160, 160, 96), 96, 3)


def subset(npz: Path, work: Path) -> Path:
    """The first 1,024 training and 128 validation and test images (dry run: 8 batches an epoch)."""
    data, out = np.load(npz), work / "small" / "pneumoniamnist.npz"
    out.parent.mkdir(parents=True)
    np.savez(out, **{k: data[k][:1024 if k.startswith("train") else 128] for k in data.files})
    return out


def classification(npz: Path, work: Path) -> tuple[list, list]:
    runs, kernels = [], []
    for model, epochs in EPOCHS.items():
        for precision in ("32", "bf16-mixed"):
            for augmentation in ("none", "light"):
                runs.append(bench(npz, model, epochs, DEVICE, True, precision, work, "mlflow", augmentation))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
        for augmentation in ("none", "light"):  # separate runs: the profiler would slow the timed epochs
            counted = bench(npz, model, 1, DEVICE, True, "32", work / "kernels", "csv", augmentation, kernels=True)
            kernels.append({k: counted[k] for k in ("model", "precision", "augmentation", "kernel_unit",
                                                    "plain_kernels_per_step", "medexp_kernels_per_step")})
            print(json.dumps(kernels[-1]), file=sys.stderr, flush=True)
    return runs, kernels


def write_volumes(root: Path) -> Path:
    from tests.fixtures_data import phantom_volume, write_nifti

    cases, shape, _, _ = VOLUMES
    training = []
    for case in range(cases):
        volume, label = phantom_volume(seed=case, shape=shape)
        for kind, array in (("images", volume), ("labels", label)):
            write_nifti(root / f"{kind}Tr" / f"case_{case:03d}.nii", array, (1.0, 1.0, 1.0))
        training.append({"image": f"imagesTr/case_{case:03d}.nii", "label": f"labelsTr/case_{case:03d}.nii"})
    (root / "dataset.json").write_text(json.dumps({"training": training}))
    return root


def dynunet_3d(work: Path) -> list:
    root = write_volumes(work / "volumes")
    _, _, patch, epochs = VOLUMES
    results = []
    for workers in (0, WORKERS):
        run_dir = work / f"dynunet-{workers}"
        command = [os.environ.get("MEDEXP_TRAIN", str(Path(sys.executable).parent / "medexp-train")),
                   "task=segmentation", "data=decathlon", f"data.root={root}", "data.num_classes=3", "model=dynunet", "logger=csv",
                   "data.preprocessing.spacing=null", f"data.patch_size=[{patch},{patch},{patch}]",
                   "data.split.test_ratio=0", "test=false", f"data.num_workers={workers}",
                   f"trainer.max_epochs={epochs}", "trainer.precision=bf16-mixed",
                   f"trainer.accelerator={'gpu' if DEVICE == 'cuda' else 'cpu'}", f"hydra.run.dir={run_dir}"]
        launched = time.time()
        wall, rss, _ = timed(command, {**os.environ, "PYTHONUNBUFFERED": "1"})
        timing = json.loads((run_dir / "timing.json").read_text())
        results.append({"num_workers": workers, "epochs": epochs, "patch": patch, "cases": VOLUMES[0],
                        "patches_per_s": round(timing["train_images_per_second"], 1),
                        "first_step_s": round(timing["first_step_at"] - launched, 1), "wall_s": round(wall, 1),
                        "peak_rss_mib": round(rss)})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def main() -> None:
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="medexp-gpu-check-") as tmp:
        work = Path(tmp)
        npz = subset(NPZ, work) if SMALL else NPZ
        runs, kernels = classification(npz.resolve(), work)
        volumes = dynunet_3d(work)
    ratio = {(r["model"], r["precision"], r["augmentation"]): r for r in runs}
    targets = {
        "cnn_throughput_ratio_fp32_none_ge_0.85": ratio["cnn", "32", "none"]["throughput_ratio"] >= 0.85,
        "resnet18_bf16_img_per_s_ge_fp32": all(ratio["resnet18", "bf16-mixed", a]["medexp_img_per_s"]
                                               >= ratio["resnet18", "32", a]["medexp_img_per_s"]
                                               for a in ("none", "light")),
    }
    device = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name() "
                             "if torch.cuda.is_available() else 'cpu', torch.__version__)"],
                            capture_output=True, text=True).stdout.strip()
    result = {"device": device, "small": SMALL, "seconds": round(time.time() - started), "targets": targets,
              "classification": runs, "kernels": kernels, "dynunet_3d": volumes}
    line = json.dumps(result)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "gpu_check.json").write_text(line)
    print(line)


if __name__ == "__main__":
    main()
