"""Silence what a user cannot act on, each filter scoped to its own message (or logger), so that everything else
still shows: Lightning's hardware and checkpoint-restoring INFO lines and its litlogger advertisement (timestamped
by Hydra's job logging), the ``LeafSpec`` deprecation Lightning triggers under newer torch, the
``log_every_n_steps`` warning (medexp logs per epoch, by design), Lightning's "srun is available" hint on hosts with
Slurm installed, MONAI's nvImageCodec notices (logged and warned), MONAI's warning that an inversion had
nothing to undo (``medexp-predict`` on a recipe that neither resamples nor resizes), MONAI's deprecation of an
argument its own surface-distance metrics pass (HD95 in every segmentation test), the "Running ATSS Matching" and
"Sampling hard negatives" lines MONAI's detector logs to the root logger each time one is built,
Lightning's warning that a resumed run's checkpoints folder is not empty, and MLflow's "Creating initial MLflow
database tables..." when a new store is opened (by the writer process, or by a sweep's parent run)."""
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
    # MONAI 1.5+ passes this deprecated argument itself, inside compute_hausdorff_distance (nothing for us to change)
    r"monai\.metrics\.utils get_mask_edges:always_return_as_numpy: Argument",
    # a resumed run goes on in its own checkpoints folder (a new run always gets a folder of its own)
    r"Checkpoint directory .* exists and is not empty",
)
# logging filters, not levels: other messages of these loggers still show (the root logger's included)
NOISY_LOG_LINES = (
    ("monai.data.nvimgcodec_pydicom_plugin", "nvImageCodec is not available"),
    ("", "Running ATSS Matching"),  # monai.apps.detection's ATSSMatcher, through logging.info
    ("", "Sampling hard negatives on a per batch basis"),  # its HardNegativeSampler, the same way
)


def quiet_libraries() -> None:
    for message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # INFO only: warnings and errors from Lightning and MLflow still show
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero",
                 "pytorch_lightning.accelerators.cuda", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, text in NOISY_LOG_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _SkipMessage) and f.text == text for f in logger.filters):
            logger.addFilter(_SkipMessage(text))


class _SkipMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()
