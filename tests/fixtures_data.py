"""Writers of tiny on-disk datasets in the layouts medexp reads (call them with pytest's ``tmp_path``).

Each writer returns the folder it filled; images are small so a whole test file runs in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

FUNDUS_SIZE = (40, 48)  # rows, columns: deliberately not square so a transposed axis shows


# datalist specs (conf/data style) for the layouts the writers below produce
CHASE_DATALIST = {
    "kind": "folder",
    "image_glob": "Image_*.jpg",
    "label_pattern": "{stem}_1stHO.png",
    "patient_regex": r"Image_(\d+)[LR]",
}
DRIVE_DATALIST = {
    "kind": "folder",
    "image_glob": "images/*.tif",
    "key_regex": r"(?P<id>\d+)_",
    "label_pattern": "1st_manual/{id}_manual1.gif",
    "extra_patterns": {"fov": "mask/{id}_*mask.gif"},
}


def fundus_pair(seed: int, size: Sequence[int] = FUNDUS_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A fake fundus photograph (RGB uint8, black corners outside a disc) and its binary vessel mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: size[0], : size[1]]
    disc = (rows - size[0] / 2) ** 2 + (cols - size[1] / 2) ** 2 < (min(size) / 2 - 1) ** 2
    vessels = np.zeros(size, bool)
    for _ in range(3):
        vessels[rng.integers(2, size[0] - 2), 4:-4] = True
        vessels[4:-4, rng.integers(2, size[1] - 2)] = True
    vessels &= disc
    image = np.zeros((*size, 3), np.uint8)
    image[disc] = (180, 90, 40)
    image[vessels] = (90, 40, 20)
    return image, vessels


def write_chase_like(root: Path, patients: Sequence[int] = (1, 2, 3, 4, 5, 6)) -> Path:
    """CHASEDB1 layout: ``Image_NNE.jpg`` (RGB) and ``Image_NNE_1stHO.png`` (1-bit) for both eyes E of each child."""
    root.mkdir(parents=True, exist_ok=True)
    for patient in patients:
        for eye_index, eye in enumerate("LR"):
            image, vessels = fundus_pair(seed=patient * 2 + eye_index)
            Image.fromarray(image).save(root / f"Image_{patient:02d}{eye}.jpg", quality=95)
            Image.fromarray(vessels).convert("1").save(root / f"Image_{patient:02d}{eye}_1stHO.png")
    return root


def write_drive_like(root: Path, ids: Sequence[int] = (21, 22, 23, 24)) -> Path:
    """DRIVE layout: ``images/NN_training.tif`` (RGB), ``1st_manual/NN_manual1.gif`` (palette, index 1 = vessel)
    and ``mask/NN_training_mask.gif`` (field of view, 0/255)."""
    for folder in ("images", "1st_manual", "mask"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for case in ids:
        image, vessels = fundus_pair(seed=case)
        Image.fromarray(image).save(root / "images" / f"{case}_training.tif")
        manual = Image.fromarray(vessels.astype(np.uint8), mode="P")
        manual.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
        manual.save(root / "1st_manual" / f"{case}_manual1.gif")
        fov = (image.max(axis=-1) > 0).astype(np.uint8) * 255
        Image.fromarray(fov).save(root / "mask" / f"{case}_training_mask.gif")
    return root


def phantom_volume(seed: int, shape: Sequence[int] = (24, 20, 12)) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (Hounsfield-ish float32) with an ellipsoid organ (label 1) holding a spherical lesion (2)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    centre = rng.uniform(-0.15, 0.15, size=3)
    radii = np.array([0.6, 0.5, 0.7]) * rng.uniform(0.9, 1.1)
    organ = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) < 1
    lesion = ((grid - centre[:, None, None, None]) ** 2).sum(0) < 0.2**2
    label = organ.astype(np.uint8) + (organ & lesion).astype(np.uint8)
    volume = rng.normal(-100.0, 20.0, size=shape) + 160.0 * organ + 80.0 * (organ & lesion)
    return volume.astype(np.float32), label


def write_nifti(path: Path, array: np.ndarray, spacing: Sequence[float]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def write_decathlon_like(root: Path, n_cases: int = 4, spacing: Sequence[float] = (1.5, 1.5, 3.0)) -> Path:
    """Medical Segmentation Decathlon layout: imagesTr/labelsTr NIfTI pairs, one unlabelled imagesTs case and
    ``dataset.json``; returns the json path."""
    training = []
    for case in range(n_cases):
        volume, label = phantom_volume(seed=case)
        write_nifti(root / "imagesTr" / f"phantom_{case:03d}.nii.gz", volume, spacing)
        write_nifti(root / "labelsTr" / f"phantom_{case:03d}.nii.gz", label, spacing)
        training.append(
            {"image": f"./imagesTr/phantom_{case:03d}.nii.gz", "label": f"./labelsTr/phantom_{case:03d}.nii.gz"}
        )
    write_nifti(root / "imagesTs" / "phantom_900.nii.gz", phantom_volume(seed=900)[0], spacing)
    dataset = {
        "name": "Phantom",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "organ", "2": "lesion"},
        "numTraining": n_cases,
        "training": training,
        "test": ["./imagesTs/phantom_900.nii.gz"],
    }
    path = root / "dataset.json"
    path.write_text(json.dumps(dataset))
    return path


def write_dicom_series(folder: Path, volume: np.ndarray, spacing: Sequence[float] = (0.8, 0.7, 2.5)) -> Path:
    """One axial CT series, a slice per file along the volume's last axis (pydicom, uncompressed int16)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    for index in range(volume.shape[-1]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice_{index:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.PatientID = study_uid, series_uid, "CT", "P1"
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0.0, 0.0, index * spacing[2]]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (between rows), column spacing
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(volume[:, :, index].T.astype(np.int16)).tobytes()
        ds.save_as(ds.filename, enforce_file_format=True)
    return folder


def write_disks_like(root: Path, n_cases: int = 12, size: Sequence[int] = (48, 64), one_side: bool = False,
                     ) -> Path:
    """A folder of gray PNGs ``images/case_NN.png`` with one bright disk each and its 0/255 mask
    ``masks/case_NN.png`` (HC18-like, much smaller). ``one_side``: every disk lies in the left half (one
    orientation along the columns); else left or right at random."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[: size[0], : size[1]]
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for case in range(n_cases):
        radius = rng.uniform(0.18, 0.28) * size[0]
        centre_col = size[1] * (rng.uniform(0.25, 0.4) if one_side or rng.random() < 0.5 else rng.uniform(0.6, 0.75))
        centre_row = size[0] * rng.uniform(0.35, 0.65)
        disk = (rows - centre_row) ** 2 + (cols - centre_col) ** 2 < radius**2
        image = rng.normal(60, 15, size) + 100 * disk
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"case_{case:02d}.png")
        Image.fromarray((disk * 255).astype(np.uint8)).save(root / "masks" / f"case_{case:02d}.png")
    return root
