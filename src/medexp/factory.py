"""From a config to the objects a run uses: data module, task, callbacks, trainer; and from a checkpoint to the
data module and task it was trained with (``load_for_inference``).

Every object comes from ``hydra.utils.instantiate`` on its config group; this module only adds what needs two
groups at once (class weights need the data, the task needs the network and the optimizer). Training, evaluation,
prediction, export and the served models all build through here; nothing here trains or tracks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medexp.errors import ConfigError


def build_datamodule(cfg: DictConfig):
    """The data module with the augmentation recipe and seed wired in, loaded once so the task can see it."""
    from hydra.utils import instantiate

    augmentation = OmegaConf.to_container(cfg.augmentation, resolve=True) if cfg.get("augmentation") else None
    datamodule = instantiate(cfg.data, augmentation=augmentation, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_task(cfg: DictConfig, datamodule, config: dict):
    """The LightningModule: network + optimizer/scheduler partials + class weights from the training labels; it
    keeps ``config`` (the resolved run config, secrets masked by the caller) for its checkpoints."""
    from hydra.utils import instantiate

    from medexp.models.pretrained import check_finetuning

    net = build_network(cfg)
    check_finetuning(cfg, net)  # before any run opens; the weights themselves come in training (build_callbacks)
    extra: dict[str, Any] = {"class_names": list(datamodule.class_names)}
    task_cfg = cfg.task
    if "class_weights" in task_cfg:
        extra["class_weights"] = class_weights(task_cfg.class_weights, datamodule, task_cfg.get("multi_label", False))
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    task = instantiate(task_cfg, net=net, optimizer=instantiate(cfg.optimizer), scheduler=scheduler, **extra)
    task.remember_config(config)
    return task


def build_network(cfg: DictConfig, **overrides):
    """The network of ``cfg.model``; its fine-tuning keys (``pretrained``, ``freeze``, ``freeze_epochs``) are not
    constructor arguments and stay out."""
    from hydra.utils import instantiate

    from medexp.models.pretrained import network_config

    return instantiate(network_config(cfg.model), **overrides)


def class_weights(spec, datamodule, multi_label: bool = False) -> list[float] | None:
    """``null`` -> none; ``balanced`` -> N / (K * n_c) from the training labels (multi-label: each label's
    negatives per positive, BCE's ``pos_weight``); a list -> as given."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise ConfigError(f"task.class_weights={spec!r} is not understood: use null, balanced or a list")
        counts = datamodule.class_counts("train")
        if min(counts) == 0:
            raise ConfigError(f"task.class_weights=balanced: a class has no training samples (counts {counts})")
        if multi_label:
            samples = datamodule.sample_count("train")
            return [(samples - c) / c for c in counts]
        return [sum(counts) / (len(counts) * c) for c in counts]
    return [float(w) for w in spec]


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list:
    """The ``callbacks`` group, then fine-tuning's (``model.pretrained``, ``model.freeze``); the LR monitor only
    where a logger can receive what it measures."""
    from hydra.utils import instantiate
    from pytorch_lightning.callbacks import LearningRateMonitor

    from medexp.callbacks.finetune import finetune_callbacks

    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c is not None and "_target_" in c]
    return [c for c in callbacks if has_logger or not isinstance(c, LearningRateMonitor)] + finetune_callbacks(cfg)


def build_trainer(cfg: DictConfig, loggers: list, callbacks: list):
    """Lightning's trainer from the ``trainer`` group, writing checkpoints atomically."""
    from hydra.utils import instantiate

    from medexp.checkpoints import AtomicCheckpointIO

    plugins = list(cfg.trainer.get("plugins") or [])
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                       plugins=[*plugins, AtomicCheckpointIO()])


def build_trial_callbacks(cfg: DictConfig) -> list:
    """The Optuna pruning callback when this job is a trial of a ``hparams_search=optuna`` sweep."""
    if cfg.get("optuna_trial") is None:
        return []
    from medexp.callbacks.pruning import make_pruning_callback

    callback = make_pruning_callback(cfg)
    return [callback] if callback is not None else []


def best_checkpoint(trainer) -> str | None:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path if path and Path(path).is_file() else None


# -- from a checkpoint -------------------------------------------------------------------------------------------
@dataclass
class Loaded:
    """What a checkpoint rebuilds: its config, the data module (preprocessing state loaded) and the task."""

    cfg: DictConfig
    datamodule: Any
    task: Any
    checkpoint: dict


def load_for_inference(ckpt_path: str, trusted_targets: Sequence[str] = (), trust: bool = False,
                       data_root: str | None = None, store: str | None = None) -> Loaded:
    """Rebuild a checkpoint's data module (its test-time preprocessing; the training data is not read when the
    checkpoint carries its statistics) and task, weights loaded, in eval mode. ``ckpt_path`` is anything
    ``medexp.checkpoints.resolve`` takes (MLflow URIs fetched from ``store``); its config is checked there before
    anything is built."""
    from hydra.utils import instantiate

    from medexp.checkpoints import load_checkpoint

    ckpt = load_checkpoint(ckpt_path, trusted_targets, trust=trust, store=store)
    config = ckpt["hyper_parameters"]["config"]
    cfg = OmegaConf.create(config)
    if data_root is not None:  # only for checkpoints without the data module's state (see below)
        cfg.data.root = data_root
    datamodule = instantiate(cfg.data, augmentation=None, seed=cfg.seed)
    # what preprocessing learnt from the training set (e.g. its mean/std), saved by Lightning with the data module
    if type(datamodule).__qualname__ in ckpt:
        datamodule.load_state_dict(ckpt[type(datamodule).__qualname__])
    task = build_task(cfg, datamodule, config)
    task.load_state_dict(ckpt["state_dict"])
    task.eval()
    return Loaded(cfg, datamodule, task, ckpt)
