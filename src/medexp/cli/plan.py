"""``medexp-plan``: compose the data config as ``medexp-train`` does (Hydra), fingerprint it and write a planned
experiment. Only Hydra is imported at module level, so ``--help`` stays fast."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from medexp.cli import user_errors
from medexp.hydra_setup import prepare_hydra

prepare_hydra()


@hydra.main(version_base="1.3", config_path="pkg://medexp.conf", config_name="plan")
def main(cfg: DictConfig) -> None:
    from medexp.quiet import quiet_libraries

    quiet_libraries()  # before MONAI is imported: its DICOM-decoder notices come on import and on each reader
    from medexp.planning.planner import leak_summary, plan_experiment, plan_summary
    with user_errors():
        data = OmegaConf.to_container(cfg.data, resolve=True)
        result = plan_experiment(data, cfg.budget, cfg.device, cfg.output, name=cfg.name,
                                 allow_leaks=cfg.allow_leaks, cache_dir=cfg.fingerprint_cache)
        fp, timing = result.fingerprint, result.schedule
        leaks = leak_summary(fp["leakage"])
        print("\n".join([
            f"medexp-plan: {fp['dataset']}: {fp['task']}, {fp['n_cases']} cases {fp['cases_per_split']}, "
            f"{fp['spatial_dims']}D, {fp['channels']} channel(s), modality {fp['modality']['kind']}, shape median "
            f"{fp['shape']['median']}",
            f"  planned: {plan_summary(fp, result.plan)}, ~{timing.epochs} epochs of ~{timing.epoch_s:.0f} s in "
            f"{cfg.budget}",
            *([f"  leakage: {leaks}"] if leaks else []),
            f"  train it: medexp-train --config-dir {result.experiment.parent.parent} experiment={result.name}",
            f"Experiment: {result.experiment}",
        ]), flush=True)

if __name__ == "__main__":
    main()
