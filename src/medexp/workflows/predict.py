"""Apply a trained checkpoint to new images and write what it predicts: the logic behind ``medexp-predict``.

The checkpoint carries its run's config. From it come the data module, whose ``prediction_loader`` reads the new
images and puts them through the test split's preprocessing (never the training augmentation), and the task, whose
``predict_step`` gives per-sample outputs. The writer registered for the task's ``prediction_kind`` (a Lightning
``BasePredictionWriter``: outputs are written batch by batch, not held) turns them into files; a new kind of task
adds its writer to ``WRITERS``. ``predictions.json`` lists what was written.
"""
from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pytorch_lightning.callbacks import BasePredictionWriter

from medexp.data.io import PIL_SUFFIXES
from medexp.errors import ConfigError, DataError, unwrapped_user_errors

IMAGE_SUFFIXES = (*PIL_SUFFIXES, "nii.gz", "nii", "dcm", "mha", "mhd", "nrrd")


@dataclass(frozen=True)
class PredictionInput:
    """One image to predict on."""

    name: str  # what its output files are named after (unique among the inputs)
    label: str  # how it is reported: its path, or ``<file.npz>[<key>][<index>]``
    source: str | np.ndarray  # what the data module reads: a path, or the image itself (C, H, W)


def find_inputs(inputs: str, npz_key: str = "test_images", spatial_dims: int = 2) -> list[PredictionInput]:
    """``inputs`` = an image file, a glob, a folder of images (and of DICOM series), a CSV/TSV table whose
    ``image`` column lists them (relative to the table), or an .npz holding images under ``npz_key`` (MedMNIST
    layout, 3D volumes with ``spatial_dims=3``); folders and globs are read in sorted order. A folder holding .dcm
    files is one DICOM series."""
    path = Path(inputs).expanduser()
    if path.is_file() and path.name.endswith(".npz"):
        return npz_inputs(path, npz_key, spatial_dims)
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        from medexp.data.image_table import table_records

        paths = [Path(r["image"]) for r in table_records(path, "image", [], None, None, None)]
    elif path.is_file():
        paths = [path]  # named explicitly: read whatever it is
    elif path.is_dir():
        paths = [path] if is_dicom_series(path) else [p for p in sorted(path.iterdir()) if is_image(p)]
    else:
        paths = [p for p in sorted(Path(p) for p in glob.glob(str(path), recursive=True)) if is_image(p)]
    if not paths:
        raise DataError(f"no images found at inputs={inputs}: give an image file, a folder of images, a glob "
                        f"('/data/*.nii.gz') or an .npz (image types: {', '.join(IMAGE_SUFFIXES)}, DICOM folders)")
    return [PredictionInput(name, str(p), str(p)) for name, p in zip(output_names(paths), paths, strict=True)]


def unreadable_inputs(inputs: list[PredictionInput]) -> dict[str, str]:
    """Of the 2D picture inputs (PNG, JPEG, ...), those that cannot be decoded (a truncated download, a file of
    another format), by label, with the reason: they are skipped and named, not allowed to abort the rest."""
    from PIL import Image

    bad = {}
    for source in inputs:
        if isinstance(source.source, str) and source.source.lower().endswith(tuple(f".{s}" for s in PIL_SUFFIXES)):
            try:
                with Image.open(source.source) as picture:
                    picture.load()
            except Exception as exc:  # PIL's errors for broken files are OSError, SyntaxError, ValueError...
                bad[source.label] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return bad


def npz_inputs(path: Path, key: str, spatial_dims: int = 2) -> list[PredictionInput]:
    from medexp.data.medmnist import channels_first

    try:
        with np.load(path) as npz:
            if key not in npz.files:
                raise DataError(f"{path} holds no array {key!r} (it has {', '.join(npz.files) or 'none'}): "
                                f"set npz_key=<one of them>")
            images = channels_first(npz[key], spatial_dims)
    except DataError:
        raise
    except Exception as exc:  # zip/pickle/format errors: name the file, not numpy's internals
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    return [PredictionInput(f"{key}_{i}", f"{path}[{key}][{i}]", image) for i, image in enumerate(images)]


def is_image(path: Path) -> bool:
    if path.is_dir():
        return is_dicom_series(path)
    return path.name.lower().endswith(tuple(f".{suffix}" for suffix in IMAGE_SUFFIXES))


def is_dicom_series(folder: Path) -> bool:
    return any(p.suffix.lower() == ".dcm" for p in folder.iterdir())


def image_stem(path: Path) -> str:
    """``case.nii.gz`` -> ``case``; a DICOM series folder keeps its name."""
    lower = path.name.lower()
    suffix = next((s for s in IMAGE_SUFFIXES if lower.endswith(f".{s}") and path.is_file()), None)
    return path.name[: -len(suffix) - 1] if suffix else path.name


def output_names(paths: list[Path]) -> list[str]:
    """File stems; where two inputs share one (``a/case.png``, ``b/case.png``), their folders below the common one
    are prefixed (``a_case``, ``b_case``) so that no output overwrites another."""
    stems = [image_stem(p) for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    common = Path(os.path.commonpath([p.parent for p in paths]))
    return ["_".join((*p.parent.relative_to(common).parts, stem)) for p, stem in zip(paths, stems, strict=True)]


# -- writers ------------------------------------------------------------------------------------------------------
class PredictionWriter(BasePredictionWriter):
    """Writes one kind of task's outputs under ``output_dir``; ``cases`` records, per input, what it wrote."""

    def __init__(self, output_dir: Path, inputs: list[PredictionInput], task, datamodule, dataset,
                 save_probabilities: bool):
        super().__init__(write_interval="batch")
        self.output_dir, self.inputs = output_dir, inputs
        self.class_names = list(task.class_names)
        self.cases: list[dict] = []
        self.overlays = False  # segmentation and detection: also draw each prediction on its image (PNG)

    def overlay_image(self, source: PredictionInput) -> np.ndarray:
        """The input as read from its file (channel first), to draw a prediction on; an .npz entry as given."""
        from medexp.data.io import read_image

        return read_image(source.source).numpy() if isinstance(source.source, str) else np.asarray(source.source)


class ClassificationWriter(PredictionWriter):
    """``predictions.csv``: per image its input, the predicted class (argmax, i.e. probability 0.5 for a binary
    task) and one probability column per class."""

    predicted_column = "predicted_class"

    def predicted(self, probabilities: list[float]) -> str:
        return self.class_names[int(np.argmax(probabilities))]

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        for index, probabilities in zip(batch_indices, prediction.float().cpu().tolist(), strict=True):
            self.cases.append({
                "input": self.inputs[index].label,
                self.predicted_column: self.predicted(probabilities),
                "probabilities": dict(zip(self.class_names, probabilities, strict=True)),
            })

    def on_predict_end(self, trainer, pl_module) -> None:
        path = self.output_dir / "predictions.csv"
        with open(path, "w", newline="") as file:
            table = csv.writer(file)
            table.writerow(["input", self.predicted_column, *(f"probability_{name}" for name in self.class_names)])
            for case in self.cases:
                table.writerow([case["input"], case[self.predicted_column], *case["probabilities"].values()])
        for case in self.cases:
            case["csv"] = str(path)


class MultiLabelClassificationWriter(ClassificationWriter):
    """``predictions.csv`` of a multi-label task: per image its input, the labels predicted present (probability
    above 0.5, as MedMNIST scores such sets; ``;``-separated, empty for none) and one probability column per label."""

    predicted_column = "predicted_labels"

    def predicted(self, probabilities: list[float]) -> str:
        return ";".join(name for name, p in zip(self.class_names, probabilities, strict=True) if p > 0.5)


class SegmentationWriter(PredictionWriter):
    """Per image a label map (uint8 class indices; 0/255 in a binary task's PNG) on the input's own grid: the
    preprocessing's resampling and resizing are undone on the class probabilities (``Invertd``, interpolating them)
    before the argmax. NIfTI with the input's affine for NIfTI/DICOM/other medical inputs, PNG for 2D photographs;
    with ``save_probabilities`` also the probabilities, as NIfTI with the classes on the last axis."""

    def __init__(self, output_dir: Path, inputs: list[PredictionInput], task, datamodule, dataset,
                 save_probabilities: bool):
        from monai.transforms import Invertd

        super().__init__(output_dir, inputs, task, datamodule, dataset, save_probabilities)
        self.save_probabilities = save_probabilities
        self.to_input_grid = Invertd("probabilities", transform=dataset.transform, orig_keys="image",
                                     nearest_interp=False)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        from monai.data import MetaTensor, decollate_batch

        for index, case, probabilities in zip(batch_indices, decollate_batch(batch), prediction, strict=True):
            case["probabilities"] = MetaTensor(probabilities.float().cpu())
            restored = self.to_input_grid(case)["probabilities"]
            # the file's own affine where the reader kept it (NIfTI, DICOM): exact, not recomputed by the inversion
            affine = np.asarray(case["image"].meta.get("original_affine", restored.affine), dtype=np.float64)
            self.cases.append(self._write(self.inputs[index], restored.numpy(), affine))

    def _write(self, source: PredictionInput, probabilities: np.ndarray, affine: np.ndarray) -> dict:
        import nibabel as nib
        from PIL import Image

        mask = probabilities.argmax(axis=0).astype(np.uint8)
        # a binary PNG mask as 0/255, the way 2D sets store them (and visible in any viewer); indices otherwise
        scale = 255 if len(self.class_names) == 2 else 1
        if source.label.lower().endswith(tuple(f".{suffix}" for suffix in PIL_SUFFIXES)):
            mask_path = self.output_dir / f"{source.name}_mask.png"
            Image.fromarray(mask * np.uint8(scale)).save(mask_path)
        else:
            mask_path, scale = self.output_dir / f"{source.name}_mask.nii.gz", 1
            nib.save(nib.Nifti1Image(mask, affine), mask_path)
        case = {"input": source.label, "mask": str(mask_path), "shape": list(mask.shape),
                "class_names": self.class_names,
                "mask_values": {name: index * scale for index, name in enumerate(self.class_names)}}
        if self.overlays:
            from medexp.reports.plots import plot_segmentation_overlay

            case["overlay"] = str(plot_segmentation_overlay(self.overlay_image(source), None, mask,
                                                            self.output_dir / f"{source.name}_overlay.png",
                                                            title=Path(source.label).name))
        if self.save_probabilities:
            case["probabilities"] = str(self.output_dir / f"{source.name}_probabilities.nii.gz")
            nib.save(nib.Nifti1Image(np.moveaxis(probabilities, 0, -1).astype(np.float32), affine),
                     case["probabilities"])
        return case


class DetectionWriter(PredictionWriter):
    """``detections.json``: per image its boxes on the input's own voxel grid (the preprocessing's resampling and
    resizing undone) in the data's ``box_mode`` and ``box_axes``, as its datalist gives boxes, with their scores,
    labels and class names; for NIfTI/DICOM/other medical inputs also ``world_boxes`` (the affine's units, e.g.
    mm). The detector keeps the boxes scoring at least the task's ``score_thresh``, best first."""

    def __init__(self, output_dir: Path, inputs: list[PredictionInput], task, datamodule, dataset,
                 save_probabilities: bool):
        super().__init__(output_dir, inputs, task, datamodule, dataset, save_probabilities)
        self.task, self.datamodule = task, datamodule
        self.box_convention = {key: datamodule.box_settings[key] for key in ("box_mode", "box_axes")}
        net = task.net
        self.label_key, self.score_key = net.target_label_key, net.pred_score_key

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        from medexp.export.model import detection_record  # the MLflow model writes the same records

        for index, image, detected in zip(batch_indices, batch["image"], prediction, strict=True):
            record, boxes = detection_record(self.task, self.datamodule, detected, image)
            case = {"input": self.inputs[index].label, "shape": [int(s) for s in image.meta["spatial_shape"]],
                    **record}
            if self.overlays and image.ndim == 3:  # 2D images; a volume's boxes are in the json only
                case["overlay"] = str(self._overlay(self.inputs[index], boxes["standard"], detected))
            self.cases.append(case)

    def _overlay(self, source: PredictionInput, boxes, detected) -> Path:
        """The input image with its detections drawn, class and score written beside each box."""
        from medexp.reports.plots import plot_detections

        drawn = {"image": self.overlay_image(source), "pred_box": boxes.numpy(),
                 "pred_label": detected[self.label_key].cpu().numpy(),
                 "pred_score": detected[self.score_key].float().cpu().numpy(), "case_id": Path(source.label).name}
        return plot_detections([drawn], self.class_names, self.output_dir / f"{source.name}_overlay.png",
                               score_thresh=0.0, title="Detections")

    def on_predict_end(self, trainer, pl_module) -> None:
        path = self.output_dir / "detections.json"
        path.write_text(json.dumps({**self.box_convention, "class_names": self.class_names, "cases": self.cases},
                                   indent=2))
        for case in self.cases:
            case["json"] = str(path)


OVERLAID = ("segmentation", "detection")
WRITERS: dict[str, type[PredictionWriter]] = {
    "classification": ClassificationWriter,
    "multilabel_classification": MultiLabelClassificationWriter,
    "segmentation": SegmentationWriter,
    "detection": DetectionWriter,
}


# -- the flow -----------------------------------------------------------------------------------------------------
def predict(ckpt_path: str | Sequence[str], inputs: str, output_dir: str | Path, npz_key: str = "test_images", batch_size: int = 64,
            save_probabilities: bool = False, data_root: str | None = None, accelerator: str = "cpu",
            trusted_targets: Sequence[str] = (), trust_checkpoint: bool = False, resize: bool = False,
            overlays: bool = False) -> dict:
    """Predict on ``inputs`` with ``ckpt_path`` (a .ckpt, a run folder: its best checkpoint, or an MLflow model
    URI: ``runs:/<id>/model``, ``models:/<name>/<version>``; several of them, or ``sweep:<parent run id or name>``,
    for an ensemble that averages their probabilities); write the outputs and ``predictions.json`` to
    ``output_dir``. Images that cannot be read are skipped and listed under ``skipped``. ``resize``: classification
    inputs of another size or channel count are brought to the training images' first; ``overlays``: segmentation
    and detection predictions are also drawn on their images (PNG)."""
    import pytorch_lightning as pl

    from medexp import checkpoints
    from medexp.export.ensemble import Ensemble, check_same_preprocessing
    from medexp.factory import load_for_inference
    from medexp.quiet import quiet_libraries

    quiet_libraries()
    members = [checkpoints.run_folder_checkpoint(member) for member in checkpoints.members(ckpt_path)]
    loaded = [load_for_inference(member, trusted_targets, trust=trust_checkpoint, data_root=data_root)
              for member in members]
    images = find_inputs(inputs, npz_key, getattr(loaded[0].datamodule, "spatial_dims", 2))
    skipped = unreadable_inputs(images)
    images = [image for image in images if image.label not in skipped]
    if not images:
        raise DataError("; ".join(f"cannot read image {label}: {reason}" for label, reason in skipped.items()))
    datamodule, task = loaded[0].datamodule, loaded[0].task  # the first member reads the inputs for all
    if len(loaded) > 1:
        check_same_preprocessing([member.datamodule for member in loaded], members)
        model = Ensemble([member.task for member in loaded])
    else:
        model = task
    kind = task.prediction_kind
    if kind not in WRITERS:
        raise ConfigError(f"medexp-predict cannot write the predictions of a {type(task).__name__} "
                          f"(it writes {', '.join(WRITERS)})")
    sources = [image.source for image in images]
    if resize and kind.endswith("classification"):
        loader = datamodule.prediction_loader(sources, batch_size, resize=True)
    elif resize:
        raise ConfigError(f"resize=true is for classification checkpoints: a {kind} recipe already brings every image "
                          "to its training grid (drop resize=true)")
    else:
        loader = datamodule.prediction_loader(sources, batch_size)
    if overlays and kind not in OVERLAID:
        raise ConfigError(f"overlays=true draws segmentation and detection predictions; a {kind} task's are in "
                          "predictions.csv (drop overlays=true)")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    writer = WRITERS[kind](output_dir, images, task, datamodule, loader.dataset, save_probabilities)
    writer.overlays = overlays
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, callbacks=[writer],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with unwrapped_user_errors():
        trainer.predict(model, dataloaders=loader, return_predictions=False)
    sources = [member if member.startswith(checkpoints.MODEL_URI_SCHEMES) else str(Path(member).resolve())
               for member in members]
    summary = {"checkpoint": sources[0] if len(sources) == 1 else sources, "inputs": str(inputs),
               "prediction_kind": kind, "cases": writer.cases,
               "skipped": [{"input": label, "reason": reason} for label, reason in skipped.items()]}
    (output_dir / "predictions.json").write_text(json.dumps(summary, indent=2))
    return summary
