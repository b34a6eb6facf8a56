"""Library noise is silenced, and only that."""
from __future__ import annotations

import logging
import warnings


def test_library_noise_is_silenced_and_only_that(caplog):
    from medexp.workflows.quiet import quiet_libraries

    quiet_libraries()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_libraries()  # filters go after simplefilter: the order a run has
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=2)
        warnings.warn("The number of training batches (4) is smaller than the logging interval", UserWarning, stacklevel=2)
        warnings.warn("inverse has been called but no invertible transforms have been supplied", stacklevel=2)
        warnings.warn("something a user should see", UserWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == ["something a user should see"]
    with caplog.at_level(logging.INFO):
        logging.getLogger("pytorch_lightning.utilities.rank_zero").info("GPU available: False")
        logging.getLogger("pytorch_lightning.utilities.rank_zero").warning("a real warning")
        logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").warning("nvImageCodec is not available; skipping")
    assert [r.getMessage() for r in caplog.records] == ["a real warning"]
