"""``medexp-eval ckpt_path=...``: test a trained checkpoint again, with the metrics it was trained with."""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from medexp.cli import user_errors
from medexp.hydra_setup import prepare_hydra

prepare_hydra()


@hydra.main(version_base="1.3", config_path="pkg://medexp.conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    from medexp.workflows.evaluate import evaluate_checkpoint

    with user_errors():
        metrics = evaluate_checkpoint(
            cfg.ckpt_path, cfg.tracking.uri, cfg.tracking.experiment, data_root=cfg.data_root, log_to=cfg.log_to,
            accelerator=cfg.accelerator, report_dir=Path(cfg.paths.output_dir) / "report",
            trusted_targets=list(cfg.trusted_targets), trust_checkpoint=cfg.trust_checkpoint,
        )
    for key, value in sorted(metrics.items()):
        print(f"{key}: {value:.4f}")
    return metrics


if __name__ == "__main__":
    main()
