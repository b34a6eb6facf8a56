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
    adopt_data_facts(cfg, datamodule)
    check_classes(datamodule)
    return datamodule


def adopt_data_facts(cfg: DictConfig, datamodule) -> None:
    """Data keys left null for the data to decide (``num_classes``, ``in_channels``, ``class_names``,
    ``image_size`` of a file-based classification set) take the data's values in ``cfg``, so the model's
    interpolations (``${data.num_classes}``) resolve and checkpoints keep them."""
    from omegaconf import open_dict

    with open_dict(cfg.data):
        for key in ("num_classes", "in_channels", "class_names", "image_size"):
            if key in cfg.data and cfg.data[key] is None and getattr(datamodule, key, None) is not None:
                value = getattr(datamodule, key)
                cfg.data[key] = list(value) if key == "class_names" else int(value)


def check_classes(datamodule) -> None:
    """``data.num_classes`` must match the data: the labels a classification set holds, and the class names. A
    mismatch otherwise trains an epoch and then fails inside a metric (or the class weights)."""
    from medexp.data.inmemory import InMemoryClassificationDataModule

    count, names = int(datamodule.num_classes), list(datamodule.class_names)
    if isinstance(datamodule, InMemoryClassificationDataModule) and not datamodule.multi_label:
        found = 1 + max(int(labels.max()) for labels in datamodule.arrays.labels.values())
        if found < count:
            raise ConfigError(f"data.num_classes={count} but the labels of {datamodule.arrays.source} span "
                              f"0..{found - 1} ({found} classes): set data.num_classes={found}")
    if len(names) != count:
        raise ConfigError(f"data.num_classes={count} but data.class_names names {len(names)} classes "
                          f"({', '.join(names)}): set data.num_classes={len(names)} or give {count} class_names")


# the networks of conf/model/ by the kind of task they serve (a network of the user's own is not checked)
NETWORK_KINDS = {
    "classification": ("medexp.models.cnn.ClassicCNN", "medexp.models.resnet.build_resnet18",
                       "monai.networks.nets.ResNet", "monai.networks.nets.DenseNet121"),
    "segmentation": ("monai.networks.nets.UNet", "monai.networks.nets.AttentionUnet", "monai.networks.nets.DynUNet",
                     "monai.networks.nets.SegResNet", "monai.networks.nets.SwinUNETR", "monai.networks.nets.UNETR"),
    "detection": ("medexp.tasks.detection.build_retinanet",),
}
NETWORK_CHOICES = {"classification": "model=cnn (or resnet18, resnet18_small, densenet121)",
                   "segmentation": "model=unet (or dynunet, attention_unet, segresnet, unetr, swin_unetr)",
                   "detection": "model=retinanet"}


def check_network_fits_task(cfg: DictConfig) -> None:
    """A classification network for a segmentation task (or any such pair) fails inside its constructor with an
    unexpected argument; name the models that fit instead."""
    from hydra.utils import get_class

    from medexp.hydra_setup import chosen_option

    try:
        task = get_class(str(cfg.task._target_))
    except Exception:  # a task of the user's own
        return
    wanted = getattr(task, "task_kind", "") or None
    target = str(cfg.model.get("_target_", ""))
    actual = next((kind for kind, targets in NETWORK_KINDS.items() if target in targets), None)
    if wanted is not None and actual is not None and actual != wanted:
        raise ConfigError(f"model={chosen_option('model', target.rsplit('.', 1)[-1])} is a {actual} network but the "
                          f"task is {wanted}: add {NETWORK_CHOICES[wanted]}")


def check_accelerator(cfg: DictConfig) -> None:
    """``trainer=gpu`` (or more devices than there are) on a machine without them: one line before anything runs,
    not Lightning's ``MisconfigurationException`` after the run opened."""
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator not in ("gpu", "cuda"):
        return
    available = torch.cuda.device_count()
    if available == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU that torch can use "
                          "(torch.cuda.is_available() is False): use trainer=cpu, or a CUDA build of torch on a GPU machine")
    devices = cfg.trainer.get("devices", 1)
    if isinstance(devices, int) and devices > available:
        raise ConfigError(f"trainer.devices={devices} but this machine has {available} GPU(s): set trainer.devices="
                          f"{available} (or -1: all of them)")


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
    if getattr(datamodule, "sampler", None) == "balanced":
        raise ConfigError("task.class_weights and data.sampler=balanced both correct the class imbalance, and "
                          "together over-correct it: keep one (task.class_weights=null or data.sampler=null)")
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


# keys of the ``trainer`` group that are medexp's, not Lightning Trainer arguments (see ``build_trainer``)
TRAINER_OPTIONS = ("compile", "float32_matmul_precision", "budget")
SYNC_BATCHNORM_BELOW = 16  # samples per device and step under which ``sync_batchnorm: auto`` synchronises


def build_trainer(cfg: DictConfig, loggers: list, callbacks: list):
    """Lightning's trainer from the ``trainer`` group, writing checkpoints atomically, with medexp's options:
    ``budget`` (``budget_callbacks``), ``compile`` (``torch.compile`` the network), ``float32_matmul_precision`` (``high``: TF32 matmuls on GPUs that
    have them; set only where CUDA is), ``sync_batchnorm: auto`` (see ``sync_batchnorm``)."""
    import torch
    from hydra.utils import instantiate

    from medexp.callbacks.compile import CompileNetwork
    from medexp.checkpoints import AtomicCheckpointIO

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    compile_network, precision, _ = (trainer_cfg.pop(key, None) for key in TRAINER_OPTIONS)  # budget: callbacks
    if precision is not None and torch.cuda.is_available():
        torch.set_float32_matmul_precision(precision)
    if trainer_cfg.get("sync_batchnorm") == "auto":
        trainer_cfg["sync_batchnorm"] = sync_batchnorm(cfg)
    plugins = list(trainer_cfg.pop("plugins", None) or [])
    return instantiate(trainer_cfg, logger=loggers or False,
                       callbacks=[*callbacks, *([CompileNetwork()] if compile_network else [])],
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

def sync_batchnorm(cfg: DictConfig) -> bool:
    """``trainer.sync_batchnorm=auto``: BatchNorm statistics shared across DDP ranks where each device sees fewer
    than 16 samples a step (``data.batch_size`` x ``data.samples_per_image``: 3D patches, large images), whose own
    statistics are noisy; not with more (a collective per BatchNorm layer and step for little), nor on the CPU,
    where torch's SyncBatchNorm does not run."""
    import torch

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    per_device = int(cfg.data.get("batch_size", 1)) * int(cfg.data.get("samples_per_image", 1) or 1)
    return not on_cpu and per_device < SYNC_BATCHNORM_BELOW


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
