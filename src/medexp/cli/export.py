"""``medexp-export ckpt_path=... format=onnx|torchscript output=...``: a trained model as a file with its preprocessing.

Only Hydra is imported at module level, so ``--help`` stays fast.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medexp.cli import user_errors
from medexp.hydra_setup import prepare_hydra

prepare_hydra()


@hydra.main(version_base="1.3", config_path="pkg://medexp.conf", config_name="export")
def main(cfg: DictConfig) -> dict:
    from medexp.export.formats import default_output
    from medexp.quiet import quiet_libraries
    from medexp.workflows.export import export

    quiet_libraries()  # MONAI's DICOM-decoder notice on import, the detector's matcher line
    with user_errors():
        result = export(
            cfg.ckpt_path, cfg.format, cfg.output or default_output(cfg.format, cfg.paths.output_dir),
            trusted_targets=list(cfg.trusted_targets), trust_checkpoint=cfg.trust_checkpoint,
            data_root=cfg.data_root, tracking_uri=cfg.tracking.uri if cfg.log_to_run else None,
        )
    print(f"{result['format']} model written to {result['output']}: max |difference| from PyTorch "
          f"{result['max_abs_difference']:.1e} on {result['parity_cases']} {result['parity_split']} cases")
    if "outside_graph" in result:  # detection: what the caller does around the graph
        print(result["outside_graph"])
    return result


if __name__ == "__main__":
    main()
