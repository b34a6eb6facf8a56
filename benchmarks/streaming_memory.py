"""Train on a generated 3D set larger than memory with flat memory: the disk cache (``data.cache=disk``).

    .venv/bin/python benchmarks/streaming_memory.py --gib 1 [--folder /tmp/medexp-streaming] [--steps 20]
    .venv/bin/python benchmarks/streaming_memory.py --gib 26 --prepared   # a cache larger than 24 GiB of RAM

1. Writes ``--gib`` GiB of CT-like cases (float32 volumes ``--shape``, uncompressed NIfTI, two spherical
   "organs" as labels) and a Decathlon ``dataset.json`` under ``--folder`` (kept and reused by later runs).
   ``--prepared`` instead writes ``--gib`` GiB of prepared cases straight into the disk cache (through the same
   ``CaseStore``), with empty files standing for the raw ones: the raw set would take 5 bytes a voxel more of disk
   and an hour more to write and prepare, and training never reads it once the cache holds every case.
2. Run 1 prepares the disk cache (every core) and reports how long that took and the cache's size.
3. Run 2 is a new data module on the cached set, as the next fold, sweep job or rank is: time from its creation to
   its first batch and to the end of the first training step (a MONAI DynUNet on ``--patch`` patches, batch 2,
   augmentation on the device), then ``--steps`` steps. Peak resident memory of the process and its loader workers is sampled throughout and printed
   as the total (VmRSS, which counts pages of the memory-mapped cache that happen to be resident and which the
   kernel drops under pressure) and its anonymous part (RssAnon: what the processes themselves hold).

Prints one JSON line. ``--steps 0`` stops after the first step.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

GIB = 2**30


def write_set(folder: Path, gib: float, shape: tuple[int, ...]) -> int:
    """Cases until the images reach ``gib`` GiB; returns the number of cases."""
    import nibabel as nib

    n_cases = max(4, int(np.ceil(gib * GIB / (4 * np.prod(shape)))))
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])

    def write(case: int) -> dict:
        image_path, label_path = folder / "imagesTr" / f"ct_{case:05d}.nii", folder / "labelsTr" / f"ct_{case:05d}.nii"
        if not (image_path.exists() and label_path.exists()):
            rng = np.random.default_rng(case)
            grid = np.ogrid[tuple(slice(0, s) for s in shape)]
            label = np.zeros(shape, np.uint8)
            for organ in (1, 2):
                centre = [rng.uniform(0.25, 0.75) * s for s in shape]
                radius = rng.uniform(0.06, 0.12) * min(shape)
                inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < radius**2
                label[inside] = organ
            image = rng.normal(0.0, 30.0, shape).astype(np.float32) - 50.0 + 100.0 * label
            nib.save(nib.Nifti1Image(label, affine), str(label_path) + ".part.nii")
            os.replace(str(label_path) + ".part.nii", label_path)
            nib.save(nib.Nifti1Image(image, affine), str(image_path) + ".part.nii")
            os.replace(str(image_path) + ".part.nii", image_path)
        return {"image": f"./imagesTr/{image_path.name}", "label": f"./labelsTr/{label_path.name}"}

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        training = list(pool.map(write, range(n_cases)))
    (folder / "dataset.json").write_text(json.dumps({"name": "streaming", "labels": {"0": "bg", "1": "a", "2": "b"},
                                                      "training": training}))
    return n_cases


def write_prepared_set(folder: Path, cache: Path, gib: float, shape: tuple[int, ...]) -> int:
    """Prepared cases of ``gib`` GiB (float16 image, uint8 label: 3 bytes a voxel) written into the disk cache of
    the benchmark's data module, each standing for an empty raw file pair."""
    from medexp.data.case_store import CaseStore
    from medexp.data.datalist import build_datalist
    from medexp.data.io import CaseSummary
    from medexp.data.transforms import foreground_indices

    n_cases = max(4, int(np.ceil(gib * GIB / (3 * np.prod(shape)))))
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for case in range(n_cases):
        names = {key: f"./{sub}/stub_{case:05d}.nii" for key, sub in (("image", "imagesTr"), ("label", "labelsTr"))}
        for name in names.values():
            (folder / name).touch()
        training.append(names)
    (folder / "dataset.json").write_text(json.dumps({"name": "streaming", "training": training}))
    module = data_module(folder, cache, 0)
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]

    def prepare(record):
        rng = np.random.default_rng(int(Path(record["image"]).stem.split("_")[1]))
        label = np.zeros((1, *shape), np.uint8)
        for organ in (1, 2):
            centre = [rng.uniform(0.25, 0.75) * s for s in shape]
            radius = rng.uniform(0.06, 0.12) * min(shape)
            label[0][sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < radius**2] = organ
        image = (rng.integers(-64, 64, (1, *shape), dtype=np.int8) / np.float16(64)) + label
        summary = CaseSummary(record["case_id"], shape, (0.8, 0.8, 2.5), 1, image[:, :: 97, ::97, ::97].reshape(1, -1),
                              np.bincount(label.ravel(), minlength=3))
        return {"image": image.astype(np.float16), "label": label, "fg_indices": foreground_indices(label)}, summary

    CaseStore(cache, module.preparation_settings()).build(build_datalist(module.datalist_spec, module.root), prepare,
                                                          workers=os.cpu_count() or 1)
    return n_cases


class PeakMemory:
    """Samples VmRSS and RssAnon of this process and its descendants every ``interval`` seconds."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak_rss, self.peak_anon = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _tree(pid: int) -> list[int]:
        pids = [pid]
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                pids += PeakMemory._tree(int(child))
        return pids

    def sample(self) -> None:
        rss = anon = 0
        for pid in set(self._tree(os.getpid())):
            try:
                fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
            except (OSError, ValueError):
                continue
            rss += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
            anon += int(fields.get("RssAnon", "0 kB").split()[0]) * 1024
        self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def data_module(folder: Path, cache_dir: Path, workers, patch: int = 64):
    from medexp.data.segmentation import SegmentationDataModule

    return SegmentationDataModule(
        root=str(folder), datalist={"kind": "decathlon", "path": "dataset.json"},
        split={"kind": "ratio", "val_ratio": 0.1, "test_ratio": 0.0, "seed": 0},
        preprocessing={"clip_percentiles": [0.5, 99.5], "normalize": "zscore"},
        patch_size=[patch] * 3, samples_per_image=1, batch_size=2, num_workers=workers, cache="disk",
        cache_dir=str(cache_dir), num_classes=3, in_channels=1, spatial_dims=3,
        augmentation={"rotate_deg": 10, "scale": [0.9, 1.1], "affine_prob": 0.5, "flip_axes": [0, 1, 2],
                      "flip_prob": 0.5, "intensity_shift": 0.1, "intensity_prob": 0.5},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the generated images (float32)")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/medexp-streaming"))
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 160])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--patch", type=int, default=64, help="training patch edge (voxels)")
    parser.add_argument("--prepared", action="store_true", help="write prepared cases into the cache directly")
    parser.add_argument("--fresh-cache", action="store_true", help="delete the cache first (time its build)")
    args = parser.parse_args()
    workers = args.workers if args.workers == "auto" else int(args.workers)
    data, cache = args.folder / "data", args.folder / "cache"
    free = shutil.disk_usage(args.folder.parent if not args.folder.exists() else args.folder).free / GIB
    if args.fresh_cache:
        shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    n_cases = (write_prepared_set if args.prepared else write_set)(*([data, cache] if args.prepared else [data]),
                                                                      args.gib, tuple(args.shape))
    written_s = time.perf_counter() - start

    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import DynUNet

    start = time.perf_counter()
    with PeakMemory() as building:
        data_module(data, cache, workers, args.patch).setup("fit")
    build_s = time.perf_counter() - start

    with PeakMemory() as training:
        start = time.perf_counter()
        module = data_module(data, cache, workers, args.patch)
        module.setup("fit")
        net = DynUNet(3, 1, 3, kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2], upsample_kernel_size=[2, 2, 2, 2],
                      filters=[8, 16, 32, 64, 96])
        optimizer, loss_fn = torch.optim.AdamW(net.parameters(), 1e-3), DiceCELoss(to_onehot_y=True, softmax=True)
        module.trainer = None
        first_batch_s = first_step_s = None
        step_times = []
        for step, batch in enumerate(module.train_dataloader()):
            first_batch_s = first_batch_s or time.perf_counter() - start
            batch = module.augment_batch(batch)  # what the trainer's on_after_batch_transfer does
            tick = time.perf_counter()
            optimizer.zero_grad()
            loss = loss_fn(net(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            step_times.append(time.perf_counter() - tick)
            if first_step_s is None:
                first_step_s = time.perf_counter() - start
            if step >= args.steps:
                break
        total_s = time.perf_counter() - start
    cache_bytes = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    model_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    print(json.dumps({
        "cases": n_cases, "prepared_directly": args.prepared, "shape": args.shape, "raw_images_gib": 0 if args.prepared else round(n_cases * 4 * float(np.prod(args.shape)) / GIB, 2),
        "disk_free_gib_before": round(free, 1), "write_s": round(written_s, 1),
        "cache_gib": round(cache_bytes / GIB, 2), "cache_build_s": round(build_s, 1),
        "cache_build_peak_rss_gib": round(building.peak_rss / GIB, 2),
        "workers": module.num_workers, "time_to_first_batch_s": round(first_batch_s, 1),
        "time_to_first_step_s": round(first_step_s, 1), "patch": args.patch,
        "steps": len(step_times), "median_step_s": round(float(np.median(step_times)), 2),
        "seconds_after_cache": round(total_s, 1), "peak_rss_gib": round(training.peak_rss / GIB, 2),
        "peak_anon_gib": round(training.peak_anon / GIB, 2), "model_mib": round(model_bytes / 2**20, 1),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
    }))


if __name__ == "__main__":
    main()
