"""``medexp-predict ckpt_path=... inputs=... output_dir=...``: a trained checkpoint's predictions on new images, as files.

Only Hydra is imported at module level, so ``--help`` stays fast.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, ListConfig

from medexp.cli import user_errors
from medexp.hydra_setup import prepare_hydra

prepare_hydra()


@hydra.main(version_base="1.3", config_path="pkg://medexp.conf", config_name="predict")
def main(cfg: DictConfig) -> dict:
    from medexp.workflows.predict import predict

    with user_errors():
        ckpt_path = list(cfg.ckpt_path) if isinstance(cfg.ckpt_path, ListConfig) else cfg.ckpt_path
        summary = predict(
            ckpt_path, cfg.inputs, cfg.output_dir, npz_key=cfg.npz_key, batch_size=cfg.batch_size,
            save_probabilities=cfg.save_probabilities, data_root=cfg.data_root, accelerator=cfg.accelerator,
            trusted_targets=list(cfg.trusted_targets), trust_checkpoint=cfg.trust_checkpoint, resize=cfg.resize,
            overlays=cfg.overlays,
        )
    print(f"{len(summary['cases'])} {summary['prediction_kind']} prediction(s) written to {cfg.output_dir} "
          "(listed in predictions.json)")
    if summary["skipped"]:  # the others are written; the exit status still says that not all were
        names = "; ".join(f"{case['input']} ({case['reason']})" for case in summary["skipped"])
        print(f"error: {len(summary['skipped'])} image(s) could not be read and were skipped: {names}", file=sys.stderr)
        sys.exit(1)
    return summary


if __name__ == "__main__":
    main()
