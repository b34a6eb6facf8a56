"""From a config to the objects a run uses: data module, task, callbacks, trainer.

Every object comes from ``hydra.utils.instantiate`` on its config group; this module only adds what needs two
groups at once (class weights need the data, the task needs the network and the optimizer). Training, evaluation
and prediction all build through here; nothing here trains or tracks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medexp.errors import ConfigError, DataError


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
    """Lightning's trainer from the ``trainer`` group (less medexp's own ``budget``), writing checkpoints atomically."""
    from hydra.utils import instantiate

    from medexp.workflows.checkpoints import AtomicCheckpointIO

    plugins = list(cfg.trainer.get("plugins") or [])
    arguments = OmegaConf.to_container(cfg.trainer, resolve=True)
    arguments.pop("budget", None)
    return instantiate(arguments, logger=loggers or False, callbacks=callbacks,
                       plugins=[*plugins, AtomicCheckpointIO()])


def budget_callbacks(cfg: DictConfig, launched_at: float) -> list:
    """``trainer.budget``: the callback that fits training into it, counting from the process's launch."""
    budget = cfg.trainer.get("budget")
    if budget is None:
        return []
    from medexp.callbacks.budget import TimeBudget, parse_duration

    if cfg.get("scheduler") and cfg.scheduler.get("_target_"):
        raise ConfigError("trainer.budget sets its own learning-rate schedule (a cosine over the budget): "
                          "add scheduler=none")
    return [TimeBudget(parse_duration(budget), started_at=launched_at)]


def build_trial_callbacks(cfg: DictConfig) -> list:
    """The Optuna pruning callback when this job is a trial of a ``hparams_search=optuna`` sweep."""
    if cfg.get("optuna_trial") is None:
        return []
    from medexp.sweeps.pruning import make_pruning_callback

    callback = make_pruning_callback(cfg)
    return [callback] if callback is not None else []


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """``last`` -> this run directory's last checkpoint; a path must exist. A requeued Slurm job (preempted, or
    signalled before its time limit) resumes from its own ``last.ckpt`` when it saved one."""
    if ckpt_path is None:
        from medexp.distributed import slurm_requeued

        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if slurm_requeued() and last.is_file() else None
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise DataError(f"ckpt_path=last but {last} does not exist: resume with hydra.run.dir=<the old run's folder>")
        return str(last)
    if not Path(ckpt_path).is_file():
        raise DataError(f"checkpoint {ckpt_path} does not exist: give ckpt_path=<path to a .ckpt> or ckpt_path=last")
    return str(ckpt_path)


def check_resumable(ckpt_path: str, task) -> None:
    """A checkpoint to resume from must hold this task's weights with the same shapes: one line naming the first
    difference, not Lightning's page of missing and unexpected keys."""
    import torch

    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("state_dict", {})
    except Exception as exc:
        raise DataError(f"cannot read checkpoint {ckpt_path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    own = task.state_dict()
    missing = [key for key in own if key not in state]
    shapes = [(key, tuple(state[key].shape), tuple(value.shape)) for key, value in own.items()
              if key in state and tuple(state[key].shape) != tuple(value.shape)]
    if shapes:
        key, theirs, ours = shapes[0]
        raise DataError(f"checkpoint {ckpt_path} does not fit this model: {key} is {list(theirs)} there but "
                        f"{list(ours)} here ({len(shapes)} such weights): resume with the config it was trained with")
    if missing:
        raise DataError(f"checkpoint {ckpt_path} lacks {len(missing)} weights of this model (first: {missing[0]}): "
                        "resume with the config it was trained with")


def best_checkpoint(trainer) -> str | None:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path if path and Path(path).is_file() else None
