"""Image classification, binary or multi-class, with the metrics a clinical reader expects.

Binary tasks score the positive class (index 1) at probability 0.5, as MedMNIST defines accuracy; multi-class
tasks use argmax and one-vs-rest macro AUROC. Sensitivity is recall of the positive class (macro recall for
multi-class), specificity its counterpart; balanced accuracy is the mean per-class recall.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics import classification as tmc

from medexp.tasks.base import STAGES, BaseTask


def classification_metrics(num_classes: int) -> MetricCollection:
    if num_classes == 2:
        return MetricCollection({
            "auroc": tmc.BinaryAUROC(),
            "accuracy": tmc.BinaryAccuracy(threshold=0.5),
            "f1": tmc.BinaryF1Score(threshold=0.5),
            "sensitivity": tmc.BinaryRecall(threshold=0.5),
            "specificity": tmc.BinarySpecificity(threshold=0.5),
        })
    return MetricCollection({
        "auroc": tmc.MulticlassAUROC(num_classes=num_classes, average="macro"),
        "accuracy": tmc.MulticlassAccuracy(num_classes=num_classes, average="micro"),
        "balanced_accuracy": tmc.MulticlassRecall(num_classes=num_classes, average="macro"),
        "f1": tmc.MulticlassF1Score(num_classes=num_classes, average="macro"),
        "sensitivity": tmc.MulticlassRecall(num_classes=num_classes, average="macro"),
        "specificity": tmc.MulticlassSpecificity(num_classes=num_classes, average="macro"),
    })


class ClassificationTask(BaseTask):
    # what ``predict_step`` returns, per sample: class probabilities (medexp.prediction writes them to a CSV)
    prediction_kind = "classification"

    def __init__(self, net: nn.Module, optimizer: Callable, num_classes: int,
                 loss: Callable[..., nn.Module] = nn.CrossEntropyLoss, scheduler: Callable | None = None,
                 class_weights: Sequence[float] | None = None, monitor: str = "val/auroc",
                 monitor_mode: str = "max", class_names: Sequence[str] | None = None,
                 channels_last: bool | str = "auto"):
        super().__init__(net, optimizer, scheduler, monitor, monitor_mode, channels_last)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        weight = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        self.criterion = loss(weight=weight) if weight is not None else loss()
        # one collection per stage (a ModuleDict can't hold a key named "train": nn.Module.train exists)
        self.stage_metrics = nn.ModuleList([classification_metrics(num_classes) for _ in STAGES])
        self.eval_losses = nn.ModuleList([MeanMetric() for _ in STAGES])
        # curves for the test report (ROC, confusion matrix); torchmetrics gathers them across DDP ranks
        self.test_curves = MetricCollection({
            "roc": tmc.BinaryROC() if num_classes == 2 else tmc.MulticlassROC(num_classes=num_classes),
            "confusion_matrix": tmc.MulticlassConfusionMatrix(num_classes=num_classes),
        })
        self.test_report: dict = {}
        # training logits stay on the device until the epoch ends: metric updates read values back to the host
        # (torchmetrics checks that scores are probabilities), which would stall a GPU at every step
        self._train_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def metrics(self, stage: str) -> MetricCollection:
        return self.stage_metrics[STAGES.index(stage)]

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=1)
        return probs[:, 1] if self.num_classes == 2 else probs

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        loss = self.criterion(logits, labels)
        self.log_train_loss(loss)
        self._train_outputs.append((logits.detach(), labels))  # scored once per epoch: no kernel per step
        return loss

    def _eval_step(self, stage: str, batch):
        images, labels = batch
        logits = self(images)
        self.eval_losses[STAGES.index(stage)].update(self.criterion(logits, labels), weight=labels.numel())
        scores = self._scores(logits)
        self.metrics(stage).update(scores, labels)
        return scores, labels

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        scores, labels = self._eval_step("test", batch)
        self.test_curves["roc"].update(scores, labels)
        predicted = (scores >= 0.5).long() if self.num_classes == 2 else scores.argmax(dim=1)
        self.test_curves["confusion_matrix"].update(predicted, labels)

    def predict_step(self, batch, batch_idx):
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.softmax(self(images).float(), dim=1)

    def _end_epoch(self, stage: str) -> None:
        values = self.metrics(stage).compute()
        if self.num_classes == 2:  # mean per-class recall, from the two recalls already computed
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
            self.metrics("train").update(self._scores(logits), labels)
        self._end_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._end_epoch("val")

    def on_test_epoch_start(self) -> None:
        self.test_curves.reset()

    def on_test_epoch_end(self) -> None:
        self._end_epoch("test")
        fpr, tpr, _ = self.test_curves["roc"].compute()
        self.test_report = {
            "roc": (fpr.cpu(), tpr.cpu()),
            "confusion_matrix": self.test_curves["confusion_matrix"].compute().cpu(),
        }

    def write_test_report(self, folder: Path) -> list[Path]:
        """ROC curve(s) and confusion matrix of the last test run, as PNG files in ``folder``."""
        from medexp.tracking.plots import plot_confusion_matrix, plot_roc

        if not self.test_report:
            return []
        fpr, tpr = self.test_report["roc"]
        if self.num_classes == 2:
            curves = [(self.class_names[1], fpr.numpy(), tpr.numpy())]
        else:
            curves = [(name, f.numpy(), t.numpy()) for name, f, t in zip(self.class_names, fpr, tpr, strict=True)]
        return [
            plot_roc(curves, folder / "roc_test.png"),
            plot_confusion_matrix(self.test_report["confusion_matrix"].numpy(), self.class_names,
                                  folder / "confusion_matrix_test.png"),
        ]
