"""Image classification, binary, multi-class or multi-label, with the metrics a clinical reader expects.

Metrics follow MedMNIST's evaluator. Binary tasks score the positive class (index 1) at probability 0.5; multi-class
tasks use argmax and one-vs-rest AUROC; multi-label tasks (ChestMNIST: K findings per image, each present or not)
score each label at probability 0.5 (accuracy is the mean over labels and images) and AUROC per label. AUROC over
several classes or labels is their macro mean, logged beside each one's own (``test/auroc/<name>``).
Sensitivity is recall of the positive class (macro recall over classes or labels), specificity its counterpart;
balanced accuracy is the mean per-class recall (per label: the mean of its sensitivity and specificity).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics import classification as tmc

from medexp.errors import ConfigError
from medexp.tasks.base import STAGES, BaseTask
from medexp.tasks.mirroring import mirror_dims, mirrored_mean


def classification_metrics(num_classes: int, multi_label: bool = False) -> MetricCollection:
    """Per-epoch metrics; ``num_classes`` counts the labels of a multi-label task. AUROC over several classes or
    labels comes per class (``average=None``): the task logs each and their mean."""
    if multi_label:
        return MetricCollection({
            "auroc": tmc.MultilabelAUROC(num_labels=num_classes, average=None),
            "accuracy": tmc.MultilabelAccuracy(num_labels=num_classes, threshold=0.5, average="micro"),
            "f1": tmc.MultilabelF1Score(num_labels=num_classes, threshold=0.5, average="macro"),
            "sensitivity": tmc.MultilabelRecall(num_labels=num_classes, threshold=0.5, average="macro"),
            "specificity": tmc.MultilabelSpecificity(num_labels=num_classes, threshold=0.5, average="macro"),
        })
    if num_classes == 2:
        return MetricCollection({
            "auroc": tmc.BinaryAUROC(),
            "accuracy": tmc.BinaryAccuracy(threshold=0.5),
            "f1": tmc.BinaryF1Score(threshold=0.5),
            "sensitivity": tmc.BinaryRecall(threshold=0.5),
            "specificity": tmc.BinarySpecificity(threshold=0.5),
        })
    return MetricCollection({
        "auroc": tmc.MulticlassAUROC(num_classes=num_classes, average=None),
        "accuracy": tmc.MulticlassAccuracy(num_classes=num_classes, average="micro"),
        "balanced_accuracy": tmc.MulticlassRecall(num_classes=num_classes, average="macro"),
        "f1": tmc.MulticlassF1Score(num_classes=num_classes, average="macro"),
        "sensitivity": tmc.MulticlassRecall(num_classes=num_classes, average="macro"),
        "specificity": tmc.MulticlassSpecificity(num_classes=num_classes, average="macro"),
    })


def report_curves(num_classes: int, multi_label: bool = False) -> MetricCollection:
    """ROC curves and confusion matrices of the test split, fed the same scores as the metrics."""
    if multi_label:
        return MetricCollection({"roc": tmc.MultilabelROC(num_labels=num_classes),
                                 "confusion_matrix": tmc.MultilabelConfusionMatrix(num_labels=num_classes)})
    if num_classes == 2:
        return MetricCollection({"roc": tmc.BinaryROC(), "confusion_matrix": tmc.BinaryConfusionMatrix()})
    return MetricCollection({"roc": tmc.MulticlassROC(num_classes=num_classes),
                             "confusion_matrix": tmc.MulticlassConfusionMatrix(num_classes=num_classes)})


def metric_key(name: str) -> str:
    """A class name as part of a metric name: MLflow accepts only letters, digits and ``_-. /``; no ``/`` here,
    which would nest the key one level deeper."""
    return re.sub(r"[^0-9A-Za-z_\-. ]", "_", name)


class ClassificationTask(BaseTask):
    """``multi_label``: K independent binary labels per image (labels ``(B, K)`` of 0/1, ``num_classes`` = K),
    scored with sigmoids and binary cross-entropy (``loss`` is then e.g. ``BCEWithLogitsLoss``; ``class_weights``
    become its ``pos_weight``); otherwise one class per image, scored with a softmax."""

    task_kind = "classification"

    def __init__(self, net: nn.Module, optimizer: Callable, num_classes: int,
                 loss: Callable[..., nn.Module] = nn.CrossEntropyLoss, scheduler: Callable | None = None,
                 class_weights: Sequence[float] | None = None, monitor: str = "val/auroc",
                 monitor_mode: str = "max", class_names: Sequence[str] | None = None,
                 channels_last: bool | str = "auto", multi_label: bool = False,
                 tta_flips: Sequence[Sequence[int]] = ()):
        super().__init__(net, optimizer, scheduler, monitor, monitor_mode, channels_last)
        self.num_classes, self.multi_label = num_classes, multi_label
        # test-time mirroring: spatial axes (0 = first spatial axis) to mirror, one more inference per entry whose
        # probabilities are averaged with the image's own (as segmentation's tta_flips; a class needs no mapping back)
        self.tta_flips = mirror_dims(tta_flips)
        # what ``predict_step`` returns, per sample: class probabilities (medexp.workflows.predict writes them to a CSV)
        self.prediction_kind = "multilabel_classification" if multi_label else "classification"
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        weight = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        weight_arg = "pos_weight" if multi_label else "weight"  # BCE weighs each label's positives
        self.criterion = loss(**{weight_arg: weight}) if weight is not None else loss()
        # one collection per stage (a ModuleDict can't hold a key named "train": nn.Module.train exists)
        self.stage_metrics = nn.ModuleList([classification_metrics(num_classes, multi_label) for _ in STAGES])
        self.eval_losses = nn.ModuleList([MeanMetric() for _ in STAGES])
        # curves for the test report (ROC, confusion matrix); torchmetrics gathers them across DDP ranks
        self.test_curves = report_curves(num_classes, multi_label)
        self.test_report: dict = {}
        # training logits stay on the device until the epoch ends: metric updates read values back to the host
        # (torchmetrics checks that scores are probabilities), which would stall a GPU at every step
        self._train_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def metrics(self, stage: str) -> MetricCollection:
        return self.stage_metrics[STAGES.index(stage)]

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float()) if self.multi_label else torch.softmax(logits.float(), dim=1)

    def predict_probabilities(self, images: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """Class (or label) probabilities of ``images``, averaged over the mirrored copies of ``tta_flips``;
        ``logits``: the network's output for ``images`` where it was already computed."""
        return mirrored_mean(lambda x: self._probabilities(self(x)), images, self.tta_flips,
                             first=None if logits is None else self._probabilities(logits))

    def _scores(self, probs: torch.Tensor) -> torch.Tensor:
        """What the metrics score: the positive class's probability for a binary task, else all of them."""
        return probs[:, 1] if self.num_classes == 2 and not self.multi_label else probs

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if (labels.ndim == 2) != self.multi_label:  # the shape only: no device sync
            raise ConfigError(
                f"the data has {labels.shape[1]} 0/1 labels per image (a multi-label set) but the task takes one "
                "class per image: use task=classification_multilabel" if labels.ndim == 2 else
                "task.multi_label=true but the data has one class index per image: use task=classification")
        return self.criterion(logits, labels.float() if self.multi_label else labels)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = self._loss(logits, labels)
        self.log_train_loss(loss)
        self._train_outputs.append((logits.detach(), labels))  # scored once per epoch: no kernel per step
        return loss

    def _eval_step(self, stage: str, batch):
        images, labels = batch
        logits = self(images)
        self.eval_losses[STAGES.index(stage)].update(self._loss(logits, labels), weight=len(labels))
        scores = self._scores(self.predict_probabilities(images, logits))
        self.metrics(stage).update(scores, labels)
        return scores, labels

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self.test_curves.update(*self._eval_step("test", batch))

    def predict_step(self, batch, batch_idx):
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict_probabilities(images)

    def _end_epoch(self, stage: str) -> None:
        values = self.metrics(stage).compute()
        if values["auroc"].ndim == 1:  # one per class or label: each logged, and their mean (MedMNIST's AUC)
            per_class = values.pop("auroc")
            values["auroc"] = per_class.nanmean()
            values.update({f"auroc/{metric_key(name)}": v for name, v in zip(self.class_names, per_class, strict=True)})
        if "balanced_accuracy" not in values:  # mean per-class recall, from the two recalls already computed
            values["balanced_accuracy"] = (values["sensitivity"] + values["specificity"]) / 2
        if stage != "train":
            loss = self.eval_losses[STAGES.index(stage)]
            values["loss"] = loss.compute()
            loss.reset()
        self.log_metrics(stage, values)
        self.metrics(stage).reset()

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._train_outputs = []

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self._train_outputs:
            logits, labels = (torch.cat(parts) for parts in zip(*self._train_outputs, strict=True))
            self._train_outputs = []
            self.metrics("train").update(self._scores(self._probabilities(logits)), labels)
        self._end_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._end_epoch("val")

    def on_test_epoch_start(self) -> None:
        self.test_curves.reset()

    def on_test_epoch_end(self) -> None:
        self._end_epoch("test")
        fpr, tpr, _ = self.test_curves["roc"].compute()
        if self.num_classes == 2 and not self.multi_label:  # one curve, of the positive class
            curves = [(self.class_names[1], fpr, tpr)]
        else:  # one per class (one-vs-rest) or label
            curves = zip(self.class_names, fpr, tpr, strict=True)
        self.test_report = {
            "roc": [(name, f.cpu().numpy(), t.cpu().numpy()) for name, f, t in curves],
            "confusion_matrix": self.test_curves["confusion_matrix"].compute().cpu().numpy(),
        }

    def write_test_page(self, datamodule, folder: Path, title: str) -> list[Path]:
        """The classification page (intervals, calibration, cases, Grad-CAM) of a single-label task on an in-memory
        set (it reads the stored images again)."""
        from medexp.reports.classification_page import collect_classification, write_classification_page

        if not datamodule.holds_arrays or self.multi_label:
            return []
        return [write_classification_page(collect_classification(self, datamodule), folder, title,
                                          self.run_summary())]

    def write_test_report(self, folder: Path) -> list[Path]:
        """ROC curves (one per class or label) and the confusion matrix (one 2x2 per label for a multi-label
        task) of the last test run, as PNG files in ``folder``."""
        from medexp.reports.plots import plot_confusion_matrix, plot_label_confusion_matrices, plot_roc

        if not self.test_report:
            return []
        matrix = self.test_report["confusion_matrix"]
        return [
            plot_roc(self.test_report["roc"], folder / "roc_test.png"),
            plot_label_confusion_matrices(matrix, self.class_names, folder / "confusion_matrices_test.png")
            if self.multi_label else
            plot_confusion_matrix(matrix, self.class_names, folder / "confusion_matrix_test.png"),
        ]
