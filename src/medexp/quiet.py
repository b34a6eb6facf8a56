"""Silence what a user cannot act on, each filter scoped to its own message (or logger), so that everything else
still shows: Lightning's hardware and checkpoint-restoring INFO lines and its litlogger advertisement (timestamped
by Hydra's job logging), the ``LeafSpec`` deprecation Lightning triggers under newer torch, the
``log_every_n_steps`` warning (medexp logs per epoch, by design), Lightning's "srun is available" hint on hosts with
Slurm installed, MONAI's nvImageCodec notices (logged and warned), MONAI's warning that an inversion had
nothing to undo (``medexp-predict`` on a recipe that neither resamples nor resizes), and MLflow's "Creating initial
MLflow database tables..." when a new store is opened (by the writer process, or by a sweep's parent run)."""
from __future__ import annotations

import logging
import warnings

NOISY_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # on any host with Slurm installed, for every run not started by srun (medexp's Slurm jobs are)
    r"The `srun` command is available on your system but is not used",
    # MONAI's DICOM reader without NVIDIA's decoder (any CPU machine); pydicom reads the files
    r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register",
    # medexp-predict undoes the preprocessing's resampling and resizing; a recipe with neither has nothing to undo
    r"inverse has been called but no invertible transforms have been supplied",
)
# a logging filter, not a level: MONAI's other warnings from that module still show
_NVIMAGECODEC = "nvImageCodec is not available"


def quiet_libraries() -> None:
    for message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # INFO only: warnings and errors from Lightning and MLflow still show
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                 "pytorch_lightning.accelerators.cuda", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    monai_dicom = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    if not any(getattr(f, "medexp", False) for f in monai_dicom.filters):
        monai_dicom.addFilter(_SkipMessage(_NVIMAGECODEC))


class _SkipMessage(logging.Filter):
    medexp = True

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()
