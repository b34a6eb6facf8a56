"""Classification from files: readers (PNG 8/16-bit, RGBA, multi-frame TIFF, DICOM file and series, NIfTI), label
tables and class folders, splits (official, patient-grouped, stratified, folds) and their one-line errors."""
from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medexp.data.image_readers import Preprocessing, fit_to_shape, read_image_file
from medexp.data.image_table import ImageTableDataModule
from medexp.errors import ConfigError, DataError
from tests.fixtures_data import write_dicom_series


def write_table(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def gray_pngs(folder: Path, count: int, seed: int = 0, size: int = 12) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        names.append(f"{folder.name}/{i:03d}.png")
    return names


def module(table: Path, **kwargs) -> ImageTableDataModule:
    dm = ImageTableDataModule(table=str(table), batch_size=4, **kwargs)
    dm.setup()
    return dm


# -- readers --------------------------------------------------------------------------------------------------------
def test_png_16_bit_keeps_its_values_and_rgba_drops_alpha(tmp_path):
    deep = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    read = read_image_file(tmp_path / "deep.png")
    assert read.dtype == np.uint16 and read.shape == (1, 2, 2) and np.array_equal(read[0], deep)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    colour = read_image_file(tmp_path / "rgba.png")
    assert colour.shape == (3, 3, 4) and colour.dtype == np.uint8 and (colour[0] == 200).all()


def test_multiframe_tiff_missing_and_corrupt_files_are_one_line_errors(tmp_path):
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (0, 100)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match="has 2 frames: save one image per file"):
        read_image_file(tmp_path / "stack.tif")
    with pytest.raises(DataError, match="does not exist"):
        read_image_file(tmp_path / "absent.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"cannot read image .*broken.png.*corrupt") as error:
        read_image_file(tmp_path / "broken.png")
    assert "\n" not in str(error.value)


def test_dicom_file_applies_the_rescale_and_a_series_folder_is_one_volume(tmp_path):
    volume = np.arange(5 * 4 * 3, dtype=np.int16).reshape(5, 4, 3) * 7 - 100  # (x, y, slices)
    series = write_dicom_series(tmp_path / "series", volume)
    read = read_image_file(series)
    assert read.shape == (1, 3, 4, 5)  # (C, slices, rows = y, columns = x)
    assert np.array_equal(read[0], volume.transpose(2, 1, 0))
    import pydicom

    one = sorted(series.iterdir())[1]
    ds = pydicom.dcmread(one)
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 2
    ds.save_as(tmp_path / "single.dcm")
    single = read_image_file(tmp_path / "single.dcm")
    assert single.shape == (1, 4, 5) and np.array_equal(single[0], volume[:, :, 1].T * 2 - 1024)
    # slices listed in reverse file order still stack along the patient axis
    for path in series.iterdir():
        path.rename(series / f"z{999 - int(path.stem.split('_')[1]):03d}.dcm")
    assert np.array_equal(read_image_file(series), read)


def test_nifti_volume_keeps_axes_and_dtype(tmp_path):
    volume = np.random.default_rng(0).integers(0, 255, (6, 5, 4), dtype=np.uint8)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "v.nii.gz"))
    read = read_image_file(tmp_path / "v.nii.gz")
    assert read.dtype == np.uint8 and np.array_equal(read[0], volume)


def test_preprocessing_windows_and_fits_keeping_proportions():
    ct = np.array([[[-2000, -1000, -300, 400, 3000]]], dtype=np.int16)
    windowed = Preprocessing.from_config({"window": [-1000, 400]})(ct)
    assert np.allclose(windowed, [[[0, 0, 0.5, 1, 1]]])
    wide = np.full((1, 10, 20), 200, np.uint8)
    fitted = fit_to_shape(wide, (8, 8))
    assert fitted.dtype == np.uint8 and fitted.shape == (1, 8, 8)
    assert (fitted[0, 2:6] == 200).all() and (fitted[0, :2] == 0).all() and (fitted[0, 6:] == 0).all()
    cube = Preprocessing.from_config({"size": 4, "scaling": "minmax"})(np.arange(8 ** 3).reshape(1, 8, 8, 8))
    assert cube.shape == (1, 4, 4, 4) and 0 <= cube.min() and cube.max() <= 1


# -- tables and folders ---------------------------------------------------------------------------------------------
def test_table_with_class_names_official_split_and_path_forms(tmp_path):
    names = gray_pngs(tmp_path / "img", 12)
    rows = [{"file": n if i % 2 else str((tmp_path / n).resolve()), "diagnosis": ["benign", "malignant"][i % 2],
             "subset": ["train"] * 8 + ["validation"] * 2 + ["test"] * 2} for i, n in enumerate(names)]
    for i, row in enumerate(rows):
        row["subset"] = (["train"] * 8 + ["validation"] * 2 + ["test"] * 2)[i]
    table = write_table(tmp_path / "labels.tsv", rows, delimiter="\t")
    dm = module(table, image_column="file", label_column="diagnosis", split_column="subset")
    assert dm.class_names == ["benign", "malignant"] and dm.num_classes == 2 and dm.in_channels == 1
    assert [len(dm.arrays.labels[s]) for s in ("train", "val", "test")] == [8, 2, 2]
    assert dm.arrays.images["train"].dtype == np.uint8
    first = np.asarray(Image.open(tmp_path / names[0]))
    assert np.array_equal(dm.arrays.images["train"][0, 0], first)
    assert dm.arrays.labels["train"].tolist() == [0, 1] * 4


def test_table_errors_name_the_column_the_file_and_the_class(tmp_path):
    names = gray_pngs(tmp_path / "img", 4)
    rows = [{"image": n, "label": "cat"} for n in names]
    table = write_table(tmp_path / "t.csv", rows)
    with pytest.raises(DataError, match=r"no column 'diagnosis' \(data.label_column\); its columns are \['image', 'label'\]"):
        module(table, label_column="diagnosis")
    with pytest.raises(DataError, match=r"row 2 has class 'cat', not one of data.class_names \['dog', 'bird'\]"):
        module(table, class_names=["dog", "bird"])
    write_table(table, [*rows, {"image": "img/missing.png", "label": "cat"}])
    with pytest.raises(DataError, match=r"missing.png listed in .*row 6 does not exist"):
        module(table)
    (tmp_path / "img" / "bad.png").write_bytes(b"garbage")
    write_table(table, [*rows, {"image": "img/bad.png", "label": "cat"}])
    with pytest.raises(DataError, match=r"cannot read image .*bad.png"):
        module(table)


def test_a_patient_in_two_official_splits_is_refused(tmp_path):
    names = gray_pngs(tmp_path / "img", 6)
    split = ["train", "train", "val", "val", "test", "test"]
    rows = [{"image": n, "label": i % 2, "patient": ["p1", "p2", "p3", "p1", "p5", "p6"][i], "split": split[i]}
            for i, n in enumerate(names)]
    table = write_table(tmp_path / "t.csv", rows)
    with pytest.raises(DataError, match=r"patient\(s\) \['p1'\] have images in both train and val"):
        module(table, patient_column="patient", split_column="split")


def test_ratio_split_groups_patients_and_keeps_class_shares(tmp_path):
    names = gray_pngs(tmp_path / "img", 60)
    rows = [{"image": n, "label": int(i // 2 % 3 == 0), "patient": f"p{i // 2}"} for i, n in enumerate(names)]
    table = write_table(tmp_path / "t.csv", rows)
    dm = module(table, patient_column="patient", split={"kind": "ratio", "val_ratio": 0.2, "test_ratio": 0.2,
                                                          "stratify": True, "seed": 3})
    split = dm.split
    assert not split.patients("train") & split.patients("test") and not split.patients("val") & split.patients("test")
    assert dm.fingerprint()["patients_per_split"] == {"train": 18, "val": 6, "test": 6}
    for name in ("val", "test"):  # a third of the patients hold a positive image; each set gets its share
        positives = {r["patient_id"] for r in getattr(split, name) if r["class"] == 1}
        assert len(positives) == 2


def test_provided_folds_and_multilabel_columns(tmp_path):
    names = gray_pngs(tmp_path / "img", 9)
    rows = [{"image": n, "effusion": i % 2, "nodule": int(i % 3 == 0), "fold": i % 3,
             "split": "test" if i == 8 else ""} for i, n in enumerate(names)]
    table = write_table(tmp_path / "t.csv", rows)
    dm = module(table, label_column=["effusion", "nodule"], fold_column="fold", split_column="split", fold=1)
    assert dm.multi_label and dm.class_names == ["effusion", "nodule"] and dm.num_classes == 2
    assert len(dm.arrays.labels["val"]) == 3 and dm.arrays.labels["val"].shape[1] == 2
    assert dm.split.settings["folds"] == "provided"
    with pytest.raises(DataError, match=r"no column 'mass' \(data.label_column\)"):
        module(table, label_column=["effusion", "mass"])


def test_class_folders_with_png_and_dicom_series_volumes(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        for case in range(5):
            write_dicom_series(root / cls / f"case{case}", rng.integers(-500, 500, (6, 6, 4)).astype(np.int16))
    dm = ImageTableDataModule(root=str(root), spatial_dims=3, batch_size=2,
                              split={"kind": "ratio", "val_ratio": 0.2, "test_ratio": 0.2, "stratify": True},
                              preprocessing={"window": [-1000, 400]})
    dm.setup()
    assert dm.class_names == ["benign", "malignant"] and dm.image_shape == [1, 4, 6, 6]
    assert sorted(dm.arrays.labels["test"].tolist()) == [0, 1]
    with pytest.raises(DataError, match="has 3 spatial axes .* data.spatial_dims=2"):
        ImageTableDataModule(root=str(root), batch_size=2).setup()


def test_enhancement_is_applied_once_at_decode_and_alike_to_new_images(tmp_path):
    names = gray_pngs(tmp_path / "img", 12, size=24)
    rows = [{"image": n, "label": i % 2, "split": (["train"] * 8 + ["val"] * 2 + ["test"] * 2)[i]}
            for i, n in enumerate(names)]
    table = write_table(tmp_path / "labels.csv", rows)
    preprocessing = {"clahe": 0.03, "contrast": 1.5}
    dm = module(table, split_column="split", preprocessing=preprocessing)
    stored = dm.arrays.images["test"]
    expected = Preprocessing.from_config(preprocessing)(read_image_file(tmp_path / names[10]))
    assert stored.dtype == np.uint8 and np.array_equal(stored[0], expected)
    assert not np.array_equal(stored[0], read_image_file(tmp_path / names[10]))
    (new,) = next(iter(dm.prediction_loader([str(tmp_path / names[10])], batch_size=1)))
    batch, _ = next(iter(dm.test_dataloader()))
    assert np.array_equal(new[0].numpy(), batch[0].numpy())


def test_disk_cache_maps_the_decoded_images_into_the_next_run_and_notices_a_changed_file(tmp_path, monkeypatch):
    import medexp.data.image_table as image_table

    names = gray_pngs(tmp_path / "img", 10)
    rows = [{"image": n, "label": i % 2, "split": (["train"] * 6 + ["val"] * 2 + ["test"] * 2)[i]}
            for i, n in enumerate(names)]
    table = write_table(tmp_path / "labels.csv", rows)
    options = {"split_column": "split", "cache": "disk", "cache_dir": str(tmp_path / "cache")}
    first = module(table, **options)
    (cached,) = (tmp_path / "cache").glob("*.npy")
    decoded = []
    monkeypatch.setattr(image_table, "read_image_file", lambda path: decoded.append(path) or read_image_file(path))
    second = module(table, **options)
    assert decoded == [] and isinstance(second.arrays.images["train"], np.memmap)
    for split in ("train", "val", "test"):
        assert np.array_equal(second.arrays.images[split], first.arrays.images[split])
    assert second.fingerprint()["sha256"] == first.fingerprint()["sha256"]
    Image.fromarray(np.full((12, 12), 7, np.uint8)).save(tmp_path / names[0])  # an edited file: decoded again
    third = module(table, **options)
    assert len(decoded) == 10 and (third.arrays.images["train"][0] == 7).all()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2 and cached.is_file()
    with pytest.raises(ConfigError, match="data.cache=disk needs data.cache_dir"):
        ImageTableDataModule(table=str(table), batch_size=4, cache="disk")
