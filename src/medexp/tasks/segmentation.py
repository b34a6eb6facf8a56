"""Semantic segmentation, 2D or 3D: patches in training, sliding windows over whole images in evaluation.

Metrics are MONAI's: Dice per foreground class (``dice_<class>`` when there are several) and their mean ``dice``,
the 95% Hausdorff distance likewise (``hd95_<class>``, ``hd95``; on ``hd95_stages`` only); for a binary task also
the pixel-level AUROC of the foreground probability; where the data names each image's pixel size
(``data.circumference``, HC18), the head-circumference error in mm (``hc_error_mm``). When a batch carries a field-of-view mask
(``fov``; e.g. the retina in fundus photographs), the metrics count only pixels inside it, as the CHASEDB1/DRIVE
protocols do. Each case's Dice and HD95 are kept under its id for report/index.html (``medexp.reports.segmentation_page``), with
overlays of only the worst and best few.

Evaluation memory: the metrics read the label maps one class at a time (a boolean mask each), never a one-hot of the
whole volume per class (an int64 one of a 14-class 512x512x200 CT is 5.9 GB). Under DDP each rank scores its own
cases (``medexp.data.sharding``: each case once) and the per-case values are gathered before the mean.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC

from medexp.reports.segmentation_page import SegmentationCases, SegmentationReportData, write_segmentation_page
from medexp.tasks.base import BaseTask
from medexp.tasks.circumference import CircumferenceTable
from medexp.tasks.mirroring import mirror_dims, mirrored_mean

EVAL_STAGES = ("val", "test")


def as_tensor(x: torch.Tensor) -> torch.Tensor:
    """MONAI's MetaTensor -> plain tensor (metadata tracking costs time in every op)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def all_ranks(trainer, item) -> list:
    """``item`` of every DDP rank, in rank order (``[item]`` in a single process): per-case report data is kept
    where each rank evaluated its share, and reported as one."""
    if trainer.world_size == 1:
        return [item]
    parts: list = [None] * trainer.world_size
    torch.distributed.all_gather_object(parts, item)
    return parts


def hd95_per_class(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """95% Hausdorff distance of each case and foreground class, ``(B, num_classes - 1)``, from label maps
    ``(B, 1, *spatial)``: one class's masks at a time (MONAI's metric takes a one-hot of all classes at once).
    NaN where the class is missing from the prediction or the truth. MONAI's warning for that is silenced: fed one class
    at a time it would name every class 0, and a structure missing from a case is no fault to report."""
    import warnings

    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"the (ground truth|prediction) of class \d+ is all 0")
        return torch.cat([compute_hausdorff_distance(predicted == c, labels == c, include_background=True,
                                                     percentile=95) for c in range(1, num_classes)], dim=1)


class SegmentationTask(BaseTask):
    # what ``predict_step`` returns, per sample: class probabilities per voxel (medexp.workflows.predict writes label maps)
    task_kind = "segmentation"
    prediction_kind = "segmentation"

    def __init__(self, net: nn.Module, optimizer: Callable, num_classes: int, roi_size: Sequence[int],
                 loss: Callable[..., nn.Module], scheduler: Callable | None = None, sw_batch_size: int = 4,
                 sw_overlap: float = 0.25, hd95_stages: Sequence[str] = ("test",), auroc_thresholds: int = 1000,
                 report_cases: int = 3, monitor: str = "val/dice", monitor_mode: str = "max",
                 class_names: Sequence[str] | None = None, tta_flips: Sequence[Sequence[int]] = (),
                 circumference: Mapping[str, Any] | None = None):
        super().__init__(net, optimizer, scheduler, monitor, monitor_mode)
        from monai.inferers import SlidingWindowInferer
        from monai.metrics import Cumulative, DiceMetric

        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.criterion = loss()
        self.inferer = SlidingWindowInferer(roi_size=list(roi_size), sw_batch_size=sw_batch_size, overlap=sw_overlap,
                                            mode="gaussian")
        # label maps in, per-case values out, gathered across DDP ranks by MONAI when aggregated
        self.dice = {s: DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=False,
                                   num_classes=num_classes) for s in EVAL_STAGES}
        self.hd95 = {s: Cumulative() for s in EVAL_STAGES}  # (cases, structures), see ``hd95_per_class``
        self.hd95_stages = set(hd95_stages)
        self.eval_losses = nn.ModuleList([MeanMetric() for _ in EVAL_STAGES])
        # binned AUROC: constant memory however many pixels a full-size image has
        self.aurocs = nn.ModuleList([BinaryAUROC(thresholds=auroc_thresholds) for _ in EVAL_STAGES]) \
            if num_classes == 2 else None
        self.report_cases = report_cases
        # HC18's measure beside Dice: |circumference of an ellipse fitted to the predicted mask - reference| in mm,
        # for data whose config names each image's pixel size (data.circumference, medexp.tasks.circumference)
        # read at the first evaluation: a checkpoint predicts without the table
        self.circumference_spec = dict(circumference) if circumference else None
        self._circumference: CircumferenceTable | None = None
        self.hc_errors = nn.ModuleList([MeanMetric() for _ in EVAL_STAGES]) if circumference else None
        # test-time augmentation: spatial axes (0 = first spatial axis) to mirror, one inference per entry
        self.tta_flips = mirror_dims(tta_flips)
        self.cases: dict[str, list] = {s: [] for s in EVAL_STAGES}
        # per-case Dice/HD95 for report/index.html: the test pass, and the validation of the checkpoint kept
        self.scored = {s: SegmentationCases() for s in EVAL_STAGES}
        self.report_data: dict[str, SegmentationReportData] = {}

    # -- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        images, labels = as_tensor(batch["image"]), as_tensor(batch["label"])
        outputs = self(images)
        if outputs.ndim == images.ndim + 1:
            # deep supervision (DynUNet): (B, 1 + heads, C, *spatial), heads upsampled to full size; each coarser
            # head's loss weighs half the previous one, weights summing to 1 (nnU-Net's scheme)
            heads = torch.unbind(outputs, dim=1)
            weights = [0.5**level for level in range(len(heads))]
            loss = sum(w * self.criterion(h, labels) for w, h in zip(weights, heads, strict=True)) / sum(weights)
        else:
            loss = self.criterion(outputs, labels)
        self.log_train_loss(loss)
        return loss

    # -- evaluation -------------------------------------------------------------------------------------------
    def predict_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities by sliding windows over whole images, averaged over the mirrored copies of
        ``tta_flips`` (nnU-Net's mirroring), each mapped back before averaging."""
        return mirrored_mean(lambda x: torch.softmax(self.inferer(x, self.net).float(), dim=1), images, self.tta_flips,
                             on_grid=True)

    def _eval_step(self, stage: str, batch) -> None:
        images, labels = as_tensor(batch["image"]), as_tensor(batch["label"]).long()
        probs = self.predict_probabilities(images)
        logits = probs.clamp_min(1e-7).log()  # softmax(log p) = p: the loss sees the averaged prediction
        self.eval_losses[EVAL_STAGES.index(stage)].update(self.criterion(logits, labels))
        predicted = probs.argmax(dim=1, keepdim=True)
        fov = as_tensor(batch["fov"]).bool() if "fov" in batch else None
        if fov is not None:  # outside the field of view both become background: it counts for nothing
            predicted, labels = predicted * fov, labels * fov
        dice = self.dice[stage](predicted, labels)  # (B, structures): kept per case for the report
        hd95 = None
        if stage in self.hd95_stages:
            hd95 = hd95_per_class(predicted, labels, self.num_classes)
            self.hd95[stage].extend(hd95)
        case_ids = batch.get("case_id") or [None] * len(images)
        if self.circumference_spec is not None:
            self._score_circumference(stage, case_ids, predicted)
        for i, case_id in enumerate(case_ids):
            self.scored[stage].add(case_id, dice[i].cpu().numpy(), None if hd95 is None else hd95[i].cpu().numpy(),
                                   images[i], labels[i, 0], predicted[i, 0])
        if self.aurocs is not None:
            scores, truth = probs[:, 1:2], labels
            if fov is not None:
                scores, truth = scores[fov], truth[fov]
            self.aurocs[EVAL_STAGES.index(stage)].update(scores.flatten(), truth.flatten())
        if len(self.cases[stage]) < self.report_cases and self.global_rank == 0:
            self.cases[stage].append((images[0].cpu(), labels[0, 0].cpu(), predicted[0, 0].cpu()))

    def _score_circumference(self, stage: str, case_ids: Sequence[str | None], predicted: torch.Tensor) -> None:
        if self._circumference is None:
            self._circumference = CircumferenceTable(**self.circumference_spec)
        masks = (predicted[:, 0] > 0).cpu().numpy()
        for case_id, mask in zip(case_ids, masks, strict=True):
            error = self._circumference.error_mm(str(case_id), mask) if case_id is not None else None
            if error is not None:
                self.hc_errors[EVAL_STAGES.index(stage)].update(torch.tensor(error, device=self.device))

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def predict_step(self, batch, batch_idx):
        return self.predict_probabilities(as_tensor(batch["image"]))

    def _start_eval(self, stage: str) -> None:
        self.cases[stage] = []
        self.scored[stage] = SegmentationCases()

    def on_validation_epoch_start(self) -> None:
        self._start_eval("val")

    def on_test_epoch_start(self) -> None:
        self._start_eval("test")

    def _end_eval(self, stage: str) -> None:
        index = EVAL_STAGES.index(stage)
        per_class = self.dice[stage].aggregate()  # (num_classes - 1,), gathered across DDP ranks by MONAI
        self.dice[stage].reset()
        values = {"dice": per_class.mean(), "mean_dice": per_class.mean(),
                  "loss": self.eval_losses[index].compute()}
        self.eval_losses[index].reset()
        names = self.class_names[1:]
        if self.num_classes > 2:
            values.update({f"dice_{name}": d for name, d in zip(names, per_class, strict=True)})
        if stage in self.hd95_stages:
            from monai.metrics.utils import do_metric_reduction

            # (num_classes - 1,): the mean over cases where it is defined, NaN for a class absent from every case
            hd95, _ = do_metric_reduction(self.hd95[stage].get_buffer(), "mean_batch")
            self.hd95[stage].reset()
            values["hd95"] = hd95.nanmean()
            if self.num_classes > 2:
                values.update({f"hd95_{name}": h for name, h in zip(names, hd95, strict=True)})
        if self.aurocs is not None:
            values["auroc"] = self.aurocs[index].compute()
            self.aurocs[index].reset()
        if self.hc_errors is not None:  # computed on every rank alike: it syncs across DDP ranks
            values["hc_error_mm"] = self.hc_errors[index].compute()
            self.hc_errors[index].reset()
        best_before = self.best_monitor
        self.log_metrics(stage, {k: v.to(self.device) for k, v in values.items()})
        self._keep_report(stage, best_before)

    def _keep_report(self, stage: str, best_before: float | None) -> None:
        """The test pass's cases; of validation, the epoch whose monitored value the kept checkpoint has (it
        improved on the best so far, as the checkpoint callback requires), or the latest if nothing is monitored."""
        cases = SegmentationCases.merged(all_ranks(self.trainer, self.scored[stage]))
        structures = self.class_names[1:]
        if stage == "test":
            self.report_data["test"] = cases.report("test", structures)
            return
        improved = self.best_monitor is not None and self.best_monitor != best_before
        if self.trainer.sanity_checking or not (improved or self.best_monitor is None or "val" not in self.report_data):
            return
        note = f"epoch {self.current_epoch}" + (f", best {self.monitor} so far: the checkpoint kept" if improved else "")
        self.report_data["val"] = cases.report("validation", structures, note)

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    # -- reports ----------------------------------------------------------------------------------------------
    def write_test_report(self, folder: Path) -> list[Path]:
        written = self._write_overlays("test", folder)
        if "test" in self.report_data:
            written.append(write_segmentation_page(self.report_data["test"], folder, self._report_title("Test"),
                                                   self.run_summary()))
        return written

    def write_validation_report(self, folder: Path) -> list[Path]:
        """Overlays of the last validation; and where no test follows the fit (``test=false``: a split without
        test cases), report/index.html of the validation of the checkpoint kept."""
        written = self._write_overlays("val", folder)
        tested_next = bool((self.hparams.get("config") or {}).get("test", False))
        if "val" in self.report_data and not tested_next:
            written.append(write_segmentation_page(self.report_data["val"], folder, self._report_title("Validation"),
                                                   self.run_summary()))
        return written

    def _report_title(self, split: str) -> str:
        name = (self.hparams.get("config") or {}).get("name")
        return f"{split} report" + (f": {name}" if name else "")

    def _write_overlays(self, stage: str, folder: Path) -> list[Path]:
        from medexp.reports.plots import plot_segmentation_overlay

        return [plot_segmentation_overlay(image, truth, pred, folder / f"{stage}_case{i}.png",
                                          title=f"{stage} case {i}")
                for i, (image, truth, pred) in enumerate(self.cases[stage])]
