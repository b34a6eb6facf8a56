"""Library noise is silenced, and only that.

What a user cannot act on stays off the terminal, from the libraries' own calls, and nothing else is hidden."""
from __future__ import annotations

import logging
import warnings

import torch

from medexp.quiet import quiet_libraries


def test_library_noise_is_silenced_and_only_that(caplog):
    from medexp.quiet import quiet_libraries

    quiet_libraries()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_libraries()  # filters go after simplefilter: the order a run has
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=2)
        warnings.warn("The number of training batches (4) is smaller than the logging interval", UserWarning, stacklevel=2)
        warnings.warn("inverse has been called but no invertible transforms have been supplied", stacklevel=2)
        warnings.warn("Checkpoint directory /runs/x/checkpoints exists and is not empty.", UserWarning, stacklevel=2)
        warnings.warn("something a user should see", UserWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == ["something a user should see"]
    with caplog.at_level(logging.INFO):
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("GPU available: False")
        logging.getLogger("pytorch_lightning.utilities.rank_zero").warning("a real warning")
        logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").warning("nvImageCodec is not available; skipping")
    assert [r.getMessage() for r in caplog.records] == ["a real warning"]


def test_monai_s_own_deprecated_argument_in_hd95_is_not_shown():
    from monai.metrics import compute_hausdorff_distance

    masks = torch.zeros(1, 2, 16, 16)
    masks[:, 1, 4:10, 4:10] = 1
    masks[:, 0] = 1 - masks[:, 1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        compute_hausdorff_distance(masks, masks, percentile=95)
        warnings.warn("a deprecation a user should see", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a deprecation a user should see"]


def test_the_detector_s_matcher_and_sampler_lines_are_not_logged_and_other_root_lines_are(caplog):
    from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
    from monai.apps.detection.utils.hard_negative_sampler import HardNegativeSampler
    from monai.data.box_utils import box_iou

    quiet_libraries()
    with caplog.at_level(logging.INFO):
        ATSSMatcher(num_candidates=4, similarity_fn=box_iou, center_in_gt=False)
        HardNegativeSampler(batch_size_per_image=64, positive_fraction=0.3)
        logging.info("a line of the user's own")
    assert [record.getMessage() for record in caplog.records] == ["a line of the user's own"]


def test_quiet_libraries_twice_adds_each_filter_once():
    quiet_libraries()
    quiet_libraries()
    assert len(logging.getLogger().filters) == len({id(f) for f in logging.getLogger().filters})
    assert sum(getattr(f, "text", "") == "Running ATSS Matching" for f in logging.getLogger().filters) == 1
