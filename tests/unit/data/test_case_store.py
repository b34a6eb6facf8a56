"""The disk cache of prepared cases: compact dtypes, memory-mapped reads, built once, shared, written atomically;
and the memory cache that hands its cases to the patch sampler without a deep copy."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from medexp.data.case_store import CaseStore
from medexp.data.segmentation import SegmentationDataModule
from medexp.data.transforms import MAX_FG_INDICES, CompactCased, RandPatchesd, foreground_indices
from tests.fixtures_data import write_decathlon_like

SPLIT = {"kind": "ratio", "val_ratio": 0.25, "test_ratio": 0.25, "seed": 0}


@pytest.fixture(scope="module")
def decathlon_root(tmp_path_factory):
    return write_decathlon_like(tmp_path_factory.mktemp("decathlon"), n_cases=4).parent


def volume_module(root: Path, cache: str, cache_dir: Path | None = None, **overrides) -> SegmentationDataModule:
    options = dict(root=str(root), datalist={"kind": "decathlon", "path": "dataset.json"}, split=SPLIT,
                   patch_size=[16, 16, 8], samples_per_image=2, batch_size=2, num_classes=3, spatial_dims=3,
                   cache=cache, cache_dir=str(cache_dir) if cache_dir else None, augmentation=None)
    return SegmentationDataModule(**{**options, **overrides})


def test_stored_cases_are_compact_and_memory_mapped(decathlon_root, tmp_path):
    module = volume_module(decathlon_root, "disk", tmp_path)
    module.setup("fit")
    folders = sorted((tmp_path).glob("v*/*/"))
    assert len(folders) == 4  # every case of every split, prepared in setup
    image = np.load(folders[0] / "image.npy", mmap_mode="r")
    label = np.load(folders[0] / "label.npy", mmap_mode="r")
    foreground = np.load(folders[0] / "fg_indices.npy")
    assert image.dtype == np.float16 and label.dtype == np.uint8  # z-scored image; 3 bytes a voxel in all
    assert foreground.dtype == np.int32 and np.array_equal(foreground, np.flatnonzero(np.asarray(label)))
    case = module._dataset("train").transform.transforms[0]({"stored": str(folders[0])})
    assert isinstance(case["image"], np.memmap) and isinstance(case["label"], np.memmap)  # patches read in place


def test_the_store_gives_what_the_memory_cache_gives(decathlon_root, tmp_path):
    stored, in_memory = volume_module(decathlon_root, "disk", tmp_path), volume_module(decathlon_root, "memory")
    for a, b in zip(stored.val_dataloader(), in_memory.val_dataloader(), strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    torch.manual_seed(0)
    batch = next(iter(stored.train_dataloader()))
    assert batch["image"].shape == (4, 1, 16, 16, 8) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.long
    assert stored.fingerprint()["shape"] == in_memory.fingerprint()["shape"]  # summaries kept in the store


def test_a_second_run_reads_no_image_and_other_settings_get_their_own_folder(decathlon_root, tmp_path, monkeypatch):
    volume_module(decathlon_root, "disk", tmp_path).setup("fit")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npy")}

    def no_reading(*args, **kwargs):
        raise AssertionError("a prepared case was read again")

    monkeypatch.setattr("medexp.data.io.LoadCased.__call__", no_reading)
    again = volume_module(decathlon_root, "disk", tmp_path, split={**SPLIT, "seed": 1})  # another split (a fold)
    again.setup("fit")
    next(iter(again.train_dataloader()))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.npy")} == before
    monkeypatch.undo()
    volume_module(decathlon_root, "disk", tmp_path, preprocessing={"normalize": "minmax"}).setup("fit")
    assert len(list(tmp_path.glob("v*"))) == 2


def test_concurrent_builders_leave_whole_cases_only(tmp_path):
    calls = []

    def prepare(record):
        calls.append(record["image"])
        label = np.zeros((1, 32, 32), np.uint8)
        label[0, 4:8, 4:8] = 1
        from medexp.data.io import CaseSummary

        return ({"image": np.full((1, 32, 32), float(record["n"]), np.float16), "label": label},
                CaseSummary(str(record["n"]), (32, 32), (1.0, 1.0), 1, np.zeros((1, 4)), np.array([1020, 4])))

    records = []
    for n in range(6):
        path = tmp_path / f"case{n}.txt"
        path.write_text(str(n))
        records.append({"image": str(path), "n": n})
    store = CaseStore(tmp_path / "cache", {"preprocessing": {}})
    threads = [threading.Thread(target=store.build, args=(records, prepare), kwargs={"rank": rank, "world_size": 2})
               for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entries = store.build(records, prepare)
    assert [float(np.load(entry / "image.npy")[0, 0, 0]) for entry in entries] == list(range(6))
    assert not list((tmp_path / "cache").rglob(".*"))  # no temporary folder left behind
    assert len(calls) < 12  # the two builders started at different cases


def test_foreground_indices_are_a_bounded_sample():
    label = np.zeros((1, 700, 700), np.uint8)
    label[0, :, :400] = 1  # 280,000 foreground pixels
    indices = foreground_indices(label)
    assert len(indices) == MAX_FG_INDICES and label.reshape(-1)[indices].all()
    assert np.all(np.diff(indices.astype(np.int64)) > 0)


def test_patches_never_share_memory_with_the_cached_case():
    case = CompactCased(("image", "label"), half=False)({"image": torch.randn(1, 20, 20),
                                                          "label": (torch.rand(1, 20, 20) > 0.5).float()})
    assert case["image"].dtype == torch.float32 and case["label"].dtype == torch.uint8
    patches = RandPatchesd(("image", "label"), [8, 8], samples=3)(case)
    for patch in patches:
        patch["image"].add_(100)  # what an in-place augmentation would do
    assert case["image"].abs().max() < 100


def test_memory_cache_hands_out_its_cases_without_a_deep_copy(decathlon_root):
    module = volume_module(decathlon_root, "memory", augmentation={"rotate_deg": 20, "affine_prob": 1.0,
                                                                   "intensity_shift": 0.5, "intensity_prob": 1.0},
                           augment_on="loader")
    dataset = module._dataset("train")
    cache = dataset.data
    assert cache.copy_cache is False
    cached = cache[0]
    snapshot = {key: value.clone() for key, value in cached.items() if torch.is_tensor(value)}
    assert cached["image"].dtype == torch.float16 and cached["label"].dtype == torch.uint8
    for _ in range(3):
        for index in range(len(dataset)):
            dataset[index]
    assert cache[0] is cached  # the very object, not a copy
    assert all(torch.equal(cached[key], value) for key, value in snapshot.items())
