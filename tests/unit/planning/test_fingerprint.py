"""The dataset fingerprint on fixtures with known answers: spacing and anisotropy, a patient leaking across splits,
a duplicated image, one orientation against mirrored cases, structure sizes, the digest cache."""
from __future__ import annotations

import json

import numpy as np

from medexp.planning.fingerprint import case_figures, fingerprint_segmentation, leakage, orientation, summarise
from tests.fixtures_data import write_decathlon_like, write_disks_like

DISKS_DATA = {
    "_target_": "medexp.data.segmentation.SegmentationDataModule", "name": "disks",
    "datalist": {"kind": "folder", "image_glob": "images/*.png", "label_pattern": "masks/{stem}.png"},
    "split": {"kind": "ratio", "val_ratio": 0.25, "test_ratio": 0.25, "seed": 0},
    "num_classes": 2, "in_channels": 1, "spatial_dims": 2, "mask_threshold": 127,
}


def disk_case(case_id: str, split: str, column: int, patient: str | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:32, :32]
    label = ((rows - 15.5) ** 2 + (cols - column) ** 2 < 36).astype(np.int64)  # rows: mirror-symmetric
    image = rng.normal(0, 1, (1, 32, 32)).astype(np.float32) + 3 * label
    record = {"case_id": case_id, "patient_id": patient or case_id, "split": split}
    return case_figures(record, image, label, (1.0, 1.0))


def test_fingerprint_of_png_disks_and_its_cache(tmp_path):
    root = write_disks_like(tmp_path / "disks", n_cases=12)
    data = {**DISKS_DATA, "root": str(root)}
    fp = fingerprint_segmentation(data, cache_dir=tmp_path / "cache")
    assert fp["task"] == "segmentation" and fp["n_cases"] == 12 and fp["channels"] == 1
    assert fp["shape"]["median"] == [48.0, 64.0] and fp["shape"]["one_shape"]
    assert fp["spacing"]["anisotropy"] == 1.0
    assert fp["structures"]["components_per_case"]["max"] == 1
    # disks of radius 8.6-13.4 px: foreground per boundary pixel ~ r/2 (4-connected boundary: a bit above)
    assert 3 < fp["structures"]["half_thickness_voxels"]["median"] < 9
    assert fp["intensity"]["foreground"]["mean"][0] > fp["intensity"]["image"]["mean"][0] + 50
    assert not fp["leakage"]["leaks"]
    cached = list((tmp_path / "cache").glob("*.json"))
    assert [p.stem for p in cached] == [fp["digest"]]
    cached[0].write_text(json.dumps({**fp, "n_cases": -1}))  # a second call reads the cache, not the files
    assert fingerprint_segmentation(data, cache_dir=tmp_path / "cache")["n_cases"] == -1


def test_spacing_and_anisotropy_of_nifti_volumes(tmp_path):
    dataset = write_decathlon_like(tmp_path / "Task", n_cases=5, spacing=(1.0, 1.0, 4.0))
    data = {"_target_": "medexp.data.segmentation.SegmentationDataModule", "name": "phantom",
            "root": str(dataset.parent), "datalist": {"kind": "decathlon", "path": "dataset.json"},
            "split": {"kind": "ratio", "val_ratio": 0.2, "test_ratio": 0.2}, "num_classes": 3, "spatial_dims": 3}
    fp = fingerprint_segmentation(data)
    assert fp["spacing"]["median"] == [1.0, 1.0, 4.0] and fp["spacing"]["anisotropy"] == 4.0
    assert fp["shape"]["median"] == [24.0, 20.0, 12.0]
    assert fp["modality"]["kind"] == "unknown"  # -100 +- 20 with organs to +140: not the Hounsfield span
    assert len(fp["classes"]["voxel_fraction"]) == 3 and fp["classes"]["case_fraction"][2] == 1.0


def test_a_patient_in_two_splits_and_a_duplicated_image_are_reported():
    cases = [disk_case("a1", "train", 10, patient="A", seed=1), disk_case("a2", "test", 20, patient="A", seed=2),
             disk_case("b", "train", 12, seed=3), disk_case("b_copy", "val", 12, seed=3),
             disk_case("c", "val", 22, seed=4)]
    report = leakage(cases)
    assert report["patients_in_two_splits"] == ["A"]
    assert report["near_duplicates_across_splits"] == [["b", "b_copy"]]
    assert report["leaks"]
    clean = leakage([disk_case(f"x{i}", "train" if i % 2 else "test", 8 + 2 * i, seed=i) for i in range(6)])
    assert not clean["leaks"]


def test_one_orientation_against_mirrored_cases():
    left = [disk_case(f"l{i}", "train", 8 + i % 3, seed=i) for i in range(10)]
    # the same disks, every other one mirrored (column c -> 31 - c): orientation varies
    either = [disk_case(f"m{i}", "train", 31 - (8 + i // 2 % 3) if i % 2 else 8 + i // 2 % 3, seed=i)
              for i in range(10)]
    one_way = orientation(left, 2)
    assert one_way["one_orientation"] == [False, True]  # rows: centred; columns: always on the left
    assert one_way["agreeing_cases"][1] == 1.0
    assert orientation(either, 2)["one_orientation"] == [False, False]


def test_summary_counts_classes_per_split():
    cases = [disk_case("a", "train", 10), disk_case("b", "val", 16), disk_case("c", "test", 20)]
    fp = summarise(cases, "segmentation", 2, 2)
    assert fp["cases_per_split"] == {"train": 1, "val": 1, "test": 1}
    assert fp["classes"]["case_fraction"] == [1.0, 1.0]
    assert 0.05 < fp["classes"]["voxel_fraction"][1] < 0.15  # a disk of radius 6 in 32x32: ~0.1


def test_foreground_fraction_counts_only_cases_with_foreground():
    empty = case_figures({"case_id": "e", "split": "train"}, np.zeros((1, 32, 32), np.float32),
                         np.zeros((32, 32), np.int64), (1.0, 1.0))
    cases = [empty, disk_case("a", "train", 10), disk_case("b", "val", 16)]
    fractions = summarise(cases, "segmentation", 2, 2)["structures"]["foreground_fraction"]
    assert fractions["min"] == fractions["max"] > 0.05  # the empty case is left out, not counted as 0


def test_same_anatomy_at_different_intensity_scales_is_no_duplicate_but_a_rescaled_copy_is():
    """MR crops of one structure (Hippocampus): alike in layout, each case stored on its own scale. Before each
    thumbnail was standardised, the scale alone made most train/validation pairs 'near-duplicates'."""
    def crop(i: int, split: str, scale: float, case_id: str):
        rng = np.random.default_rng(i)
        rows, cols = np.mgrid[:32, :32]
        label = ((rows - 15.5) ** 2 + (cols - 14 - i % 4) ** 2 < 36).astype(np.int64)
        image = (100 + 60 * label + rng.normal(0, 20, (1, 32, 32))) * scale
        record = {"case_id": case_id, "patient_id": case_id, "split": split}
        return case_figures(record, image.astype(np.float32), label, (1.0, 1.0))

    cases = [crop(i, "train" if i < 8 else "val", 0.5 + i / 4, f"h{i}") for i in range(12)]
    assert leakage(cases)["near_duplicates_across_splits"] == []
    copied = leakage(cases + [crop(0, "val", 3.0, "h0_rescaled")])  # h0 (train) stored again at 6x the scale
    assert copied["near_duplicates_across_splits"] == [["h0", "h0_rescaled"]]
