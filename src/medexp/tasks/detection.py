"""Lesion detection, 2D or 3D bounding boxes, with MONAI's RetinaNet as its LUNA16 tutorial trains it.

The network is MONAI's ``RetinaNetDetector`` (a ResNet + feature pyramid ``RetinaNet``, anchors per pyramid level)
built by ``build_retinanet`` from ``conf/model/retinanet.yaml``; the task sets its training parts (ATSS matcher,
hard negative sampler) and its inference parts (box selection, optional sliding windows) from ``conf/task/
detection.yaml``. Training logs the detector's two losses (classification, box regression) and their sum;
validation and test log MONAI's COCO metrics (``COCOMetric`` over ``matching_batch``) under short names:
``map`` (mean AP over the IoU range), ``ap_iou10`` / ``ap_iou50`` / ... (AP at one IoU), ``mar`` (mean recall
over the range at the most detections), ``mar_det1`` / ... (at fewer detections), ``ar_iou10`` / ...; with several
classes each also per class (``map_<class>``). ``froc`` is LUNA16's score (mean sensitivity at 1/8 to 8 false
positives per image); the test report holds the FROC curve, for 2D images the first test images with their
ground-truth and detected boxes drawn, and report/index.html (``medexp.reports.detection_page``: AP per class at IoU 0.5 with
bootstrap intervals over images, a per-image table worst first).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.data.box_utils import box_iou, clip_boxes_to_image
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from torch import nn
from torch.nn import functional as F

from medexp.data.detection import BOX, IMAGE, LABEL
from medexp.errors import ConfigError, DataError
from medexp.reports.detection_page import DetectionReportData, write_detection_page
from medexp.tasks.base import BaseTask
from medexp.tasks.segmentation import all_ranks, as_tensor

log = logging.getLogger(__name__)
EVAL_STAGES = ("val", "test")
# LUNA16's FROC operating points: false positives per image at which sensitivity is read (their mean is the CPM)
FROC_FP_PER_IMAGE = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
REPORT_IMAGES = 4  # test images drawn with their boxes in the test report (2D)
_COCO_KEY = re.compile(r"(?:(?P<cls>.+)_)?(?P<kind>mAP|mAR|AP|AR)_IoU_(?P<iou>[\d.]+)(?:_[\d.]+_[\d.]+)?_MaxDet_(?P<det>\d+)")


def build_retinanet(backbone: nn.Module, spatial_dims: int, num_classes: int,
                    anchor_sizes: Sequence[float | Sequence[float]], returned_layers: Sequence[int] = (1, 2),
                    fpn_channels: int = 64) -> RetinaNetDetector:
    """MONAI's RetinaNet detector over ``backbone`` (a MONAI ``ResNet``): a feature pyramid on its layers
    ``returned_layers`` plus one pooled level, anchors ``anchor_sizes`` (a side, or one per axis) at the finest level,
    doubled at each coarser one (the LUNA16 tutorial's layout, with ``fpn_channels`` instead of a fixed 256)."""
    layers = list(returned_layers)
    if backbone.no_max_pool:  # the pyramid calls every child module in order, ignoring ResNet's own switch
        backbone.maxpool = nn.Identity()
    feature_extractor = BackboneWithFPN(
        backbone,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(layers)},
        in_channels_list=[_out_channels(getattr(backbone, f"layer{k}")) for k in layers],
        out_channels=fpn_channels,
        spatial_dims=spatial_dims,
    )
    anchor_shapes = [[float(s)] * spatial_dims if np.isscalar(s) else [float(v) for v in s] for s in anchor_sizes]
    anchor_generator = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[2**level for level in range(len(layers) + 1)], base_anchor_shapes=anchor_shapes,
    )
    # the input must divide into the coarsest level: stem stride x max-pool x layer strides x the pooled level
    stem = np.array(backbone.conv1.stride) * (1 if backbone.no_max_pool else 2)
    network = RetinaNet(
        spatial_dims=spatial_dims, num_classes=num_classes,
        num_anchors=anchor_generator.num_anchors_per_location()[0], feature_extractor=feature_extractor,
        size_divisible=[int(s) * 2 ** max(layers) for s in stem],
    )
    return RetinaNetDetector(network=network, anchor_generator=anchor_generator)


def _out_channels(layer: nn.Module) -> int:
    return [m for m in layer.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))][-1].out_channels


def check_sliding_windows(roi_size: Sequence[int], overlap: float, size_divisible: Sequence[int]) -> None:
    """Windows must start on the coarsest feature map's grid (``size_divisible``, its stride): MONAI places each
    window's feature maps at its start scaled down and rounded, so an off-grid start shifts the boxes of that
    window, or fails to stitch. MONAI steps windows by ``int(roi_size * (1 - overlap))``."""
    grid = list(size_divisible)
    if len(roi_size) != len(grid):
        raise ConfigError(f"task.sw_roi_size={list(roi_size)} needs one size per spatial axis ({len(grid)})")
    steps = [int(size * (1 - overlap)) for size in roi_size]
    if any(size <= 0 or size % g or step % g for size, step, g in zip(roi_size, steps, grid, strict=True)):
        raise ConfigError(
            f"task.sw_roi_size={list(roi_size)} with task.sw_overlap={overlap} (window steps {steps}) must be "
            f"multiples of the network's size_divisible {grid}, windows and steps both: e.g. sw_roi_size "
            f"{[4 * g for g in grid]} with sw_overlap 0.25 or 0.5"
        )


def froc_curve(matches: Sequence[Mapping[int, Mapping[str, np.ndarray]]], num_images: int,
               ) -> tuple[np.ndarray, np.ndarray]:
    """False positives per image and sensitivity at every score threshold, all classes pooled, a detection counting
    as found at the first (lowest) IoU threshold of the matching: ``matches`` as MONAI's ``matching_batch`` gives."""
    scores, found, targets = [np.zeros(0)], [np.zeros(0, dtype=bool)], 0
    for image in matches:
        for per_class in image.values():
            scores.append(per_class["dtScores"])
            found.append(per_class["dtMatches"][0].astype(bool))
            targets += int(np.sum(~per_class["gtIgnore"].astype(bool)))
    order = np.argsort(-np.concatenate(scores), kind="stable")
    hits = np.concatenate(found)[order]
    return np.cumsum(~hits) / max(num_images, 1), np.cumsum(hits) / max(targets, 1)


def froc_score(fp_per_image: np.ndarray, sensitivity: np.ndarray,
               operating_points: Sequence[float] = FROC_FP_PER_IMAGE) -> float:
    """Mean sensitivity at ``operating_points`` false positives per image (LUNA16's CPM); beyond the last threshold
    a detector reaches no more sensitivity."""
    if len(sensitivity) == 0:
        return 0.0
    at = [sensitivity[np.searchsorted(fp_per_image, point, side="right") - 1]
          if fp_per_image[0] <= point else 0.0 for point in operating_points]
    return float(np.mean(at))


def short_metric_name(coco_key: str, max_detections: int) -> str:
    """``mAP_IoU_0.10_0.50_0.05_MaxDet_100`` -> ``map``; ``AP_IoU_0.50_MaxDet_100`` -> ``ap_iou50``;
    ``mAR_IoU_..._MaxDet_5`` -> ``mar_det5``; a class prefix ``nodule_`` becomes a suffix ``_nodule``."""
    match = _COCO_KEY.fullmatch(coco_key)
    if match is None:
        return coco_key
    kind = match["kind"].lower()
    name = kind if kind.startswith("m") else f"{kind}_iou{round(float(match['iou']) * 100):02d}"
    if int(match["det"]) != max_detections:
        name += f"_det{match['det']}"
    return f"{name}_{match['cls']}" if match["cls"] else name


NO_BOX = -1.0  # MONAI's COCO value for a class without a ground-truth box in the split


class PresentClassesCOCOMetric(COCOMetric):
    """MONAI's COCO metrics with AP averaged over the classes that have boxes in the split, as COCO's own evaluation
    does (and MONAI's AR already does): MONAI averages its -1 for a class without boxes into the AP mean, which
    then goes negative (``val/ap_iou50: -0.32`` on a BCCD smoke run whose few images held no platelet)."""

    @staticmethod
    def _select_ap(dataset_statistics: dict, iou_idx=None, cls_idx=None, max_det_idx: int = -1) -> float:
        precision = dataset_statistics["precision"]
        if iou_idx is not None:
            precision = precision[iou_idx]
        if cls_idx is not None:
            precision = precision[..., cls_idx, :]
        precision = precision[..., max_det_idx]
        present = precision[precision > NO_BOX]
        return float(present.mean()) if present.size else NO_BOX


def coco_values(coco: COCOMetric, matches: list, max_detections: int) -> dict[str, float]:
    """The COCO metrics under short names, leaving out each value that no class with boxes defines (MONAI's -1):
    an absent class's own values, and every AP and AR when the split holds no box at all."""
    values = {short_metric_name(k, max_detections): float(v) for k, v in coco(matches)[0].items()}
    return {name: value for name, value in values.items() if value != NO_BOX}


def absent_classes(class_names: Sequence[str], cases: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
    """The classes of which no case holds a ground-truth box."""
    present = {int(label) for case in cases for label in np.asarray(case["label"]).ravel()}
    return [name for index, name in enumerate(class_names) if index not in present]


class DetectionTask(BaseTask):
    task_kind = "detection"
    prediction_kind = "detection"

    def __init__(self, net: RetinaNetDetector, optimizer: Callable, num_classes: int,
                 scheduler: Callable | None = None, class_names: Sequence[str] | None = None,
                 atss_candidates: int = 4, hard_negative: Mapping[str, float] | None = None,
                 classification_weight: float = 1.0, score_thresh: float = 0.02, nms_thresh: float = 0.22,
                 detections_per_image: int = 100, sw_roi_size: Sequence[int] | None = None, sw_overlap: float = 0.25,
                 iou_list: Sequence[float] = (0.1, 0.5, 0.75), iou_range: Sequence[float] = (0.1, 0.5, 0.05),
                 max_detections: Sequence[int] = (1, 5, 100), monitor: str = "val/map", monitor_mode: str = "max",
                 report_score_thresh: float = 0.5):
        super().__init__(net, optimizer, scheduler, monitor, monitor_mode)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        net.set_target_keys(box_key=BOX, label_key=LABEL)
        net.set_atss_matcher(num_candidates=atss_candidates, center_in_gt=False)
        # most anchors are background: train on the positives plus the hardest negatives (LUNA16's settings)
        net.set_hard_negative_sampler(**{"batch_size_per_image": 64, "positive_fraction": 0.3, "pool_size": 20,
                                         "min_neg": 16, **dict(hard_negative or {})})
        net.set_box_selector_parameters(score_thresh=score_thresh, topk_candidates_per_level=1000,
                                        nms_thresh=nms_thresh, detections_per_img=detections_per_image)
        self.sw_roi_size = None if sw_roi_size is None else [int(s) for s in sw_roi_size]
        if self.sw_roi_size is not None:  # whole large volumes in evaluation: sliding windows over the network
            check_sliding_windows(self.sw_roi_size, sw_overlap, net.size_divisible)
            net.set_sliding_window_inferer(roi_size=self.sw_roi_size, overlap=sw_overlap, sw_batch_size=1)
        self.classification_weight = classification_weight
        self.report_score_thresh = report_score_thresh
        self.coco = PresentClassesCOCOMetric(classes=self.class_names, iou_list=iou_list, iou_range=iou_range,
                               max_detection=max_detections, per_class=num_classes > 1, verbose=False)
        self.max_detections = max(max_detections)
        self._loss_sums: dict[str, torch.Tensor] = {}
        self.cases: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in EVAL_STAGES}
        self.test_report: DetectionReportData | None = None
        self._absent_noted: set[tuple[str, ...]] = set()

    @staticmethod
    def _inputs(batch: Mapping[str, list]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        return batch[IMAGE], [{BOX: box, LABEL: label} for box, label in zip(batch[BOX], batch[LABEL], strict=True)]

    # -- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        images, targets = self._inputs(batch)
        losses = self.net(images, targets)
        loss = self.classification_weight * losses[self.net.cls_key] + losses[self.net.box_reg_key]
        self.log_train_loss(loss)
        for key, value in losses.items():  # summed on the device, logged per epoch like the total
            self._loss_sums[key] = self._loss_sums.get(key, 0) + value.detach()
        return loss

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._loss_sums = {}

    def on_train_epoch_end(self) -> None:
        steps = max(self.train_steps, 1)
        super().on_train_epoch_end()
        if self._loss_sums:
            self.log_metrics("train", {f"loss_{key}": total / steps for key, total in self._loss_sums.items()})

    def compile_network(self) -> None:
        """The RetinaNet only: the detector around it matches anchors and samples negatives in Python."""
        self.net.network.compile()

    # -- evaluation -------------------------------------------------------------------------------------------
    def predict_step(self, batch, batch_idx):
        """Per image its detections ``{"box": (N, 2 * dims) standard mode, "label": (N,), "label_scores": (N,)}``
        above ``score_thresh``; new images (``medexp-predict``) come without boxes, so only the images are read."""
        images = [as_tensor(image) for image in batch[IMAGE]]
        if self.sw_roi_size is None:
            return self.net(images)
        return [self._detect_by_windows(image) for image in images]

    def _detect_by_windows(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """One image by sliding windows, first padded at its end (which keeps its voxel coordinates) to at least a
        window: MONAI would pad a smaller image on both sides, by amounts the coarser feature maps cannot follow,
        and its anchors would then spread over the image at the wrong stride."""
        size = image.shape[1:]
        short = [max(window - s, 0) for window, s in zip(self.sw_roi_size, size, strict=True)]
        padded = F.pad(image, [pad for extra in reversed(short) for pad in (0, extra)])
        (detected,) = self.net([padded], use_inferer=True)
        boxes, keep = clip_boxes_to_image(detected[BOX], size, remove_empty=True)
        score = self.net.pred_score_key
        return {BOX: boxes, LABEL: detected[LABEL][keep], score: detected[score][keep]}

    def _eval_step(self, stage: str, batch) -> None:
        images, targets = self._inputs(batch)
        for image, detected, target, case_id in zip(images, self.predict_step(batch, 0), targets,
                                                    batch.get("case_id", [""] * len(images)), strict=True):
            case = {
                "pred_box": detected[BOX].float().cpu().numpy(), "pred_label": detected[LABEL].cpu().numpy(),
                "pred_score": detected[self.net.pred_score_key].float().cpu().numpy(),
                "box": target[BOX].cpu().numpy(), "label": target[LABEL].cpu().numpy(), "case_id": str(case_id),
            }
            if stage == "test" and image.ndim == 3 and len(self.cases[stage]) < REPORT_IMAGES:
                case["image"] = as_tensor(image).float().cpu().numpy()
            self.cases[stage].append(case)

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch)

    def on_validation_epoch_start(self) -> None:
        self.cases["val"] = []

    def on_test_epoch_start(self) -> None:
        self.cases["test"] = []

    def _end_eval(self, stage: str) -> None:
        cases = self._gathered(self.cases[stage])
        if not cases:
            return
        matches = matching_batch(
            iou_fn=box_iou, iou_thresholds=self.coco.iou_thresholds,
            pred_boxes=[c["pred_box"] for c in cases], pred_classes=[c["pred_label"] for c in cases],
            pred_scores=[c["pred_score"] for c in cases], gt_boxes=[c["box"] for c in cases],
            gt_classes=[c["label"] for c in cases], max_detections=self.max_detections,
        )
        values = coco_values(self.coco, matches, self.max_detections)
        self._note_absent(stage, absent_classes(self.class_names, cases))
        fp_per_image, sensitivity = froc_curve(matches, len(cases))
        values["froc"] = froc_score(fp_per_image, sensitivity)
        if stage == "test":
            self.test_report = DetectionReportData(
                self.class_names, [c["case_id"] for c in cases], matches, list(self.coco.iou_thresholds),
                self.max_detections, self.report_score_thresh, values, (fp_per_image, sensitivity), FROC_FP_PER_IMAGE,
                [c for c in cases if "image" in c])
        # every rank holds all cases now, so the values agree: logged without another reduction
        self.log_metrics(stage, {k: torch.tensor(v) for k, v in values.items()}, sync_dist=False)

    def _note_absent(self, stage: str, absent: list[str]) -> None:
        """Say once per set of absent classes that they are left out; refuse to pick checkpoints on no AP at all."""
        if len(absent) == len(self.class_names) and stage == "val" and self.trainer.state.fn == "fit":
            raise DataError(f"the validation images hold no box of any class, so no AP can choose a checkpoint: give "
                            f"the val split images with boxes (with trainer.limit_val_batches, among its first "
                            f"{len(self.cases[stage])} images)")
        if absent and tuple(absent) not in self._absent_noted:
            self._absent_noted.add(tuple(absent))
            log.info("%s: no ground-truth box of class(es) %s in these images: left out of the AP and AR means (their "
                     "own values are not logged)", stage, ", ".join(absent))

    def _gathered(self, cases: list) -> list:
        """All ranks' cases (COCO matching needs every image at once, not a mean of per-rank values)."""
        return [case for part in all_ranks(self.trainer, cases) for case in part]

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def write_test_report(self, folder: Path) -> list[Path]:
        """The last test run's FROC curve, (2D) its first images with ground-truth and detected boxes, and
        report/index.html (AP per class with intervals, a per-image table) holding them."""
        if self.test_report is None:
            return []
        name = (self.hparams.get("config") or {}).get("name")
        return write_detection_page(self.test_report, folder, "Test report" + (f": {name}" if name else ""),
                                    self.run_summary())
