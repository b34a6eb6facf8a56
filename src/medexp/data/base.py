"""What every data module declares, so that workflows, export and reports ask it instead of checking its class.

``task_kind`` says which kind of task it feeds (``classification``, ``segmentation``, ``detection``; a task declares
the same, ``BaseTask.task_kind``); ``holds_arrays`` says its images are stored arrays in memory (MedMNIST,
synthetic sets), which is what the deployed classifier graph and the classification report page read. The methods
are what training, the run records and ``medexp-predict`` call on any data module.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl

TASK_KINDS = ("classification", "segmentation", "detection")


class MedexpDataModule(pl.LightningDataModule):
    """A Lightning data module with medexp's contract (see the module docstring)."""

    task_kind: str = ""
    holds_arrays: bool = False
    class_names: list[str]

    def class_counts(self, split: str = "train") -> list[int]:
        """Cases (classification), voxels (segmentation) or boxes (detection) per class in ``split``."""
        raise NotImplementedError

    def sample_count(self, split: str = "train") -> int:
        """The number of cases in ``split``."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data a run saw (sources, split sizes, checksums), logged with the run."""
        raise NotImplementedError

    def prediction_loader(self, images: Sequence[Any], batch_size: int):
        """A loader of ``images`` (paths, or arrays for in-memory sets) through the test-time preprocessing."""
        raise NotImplementedError
