"""MLflow tracking: run naming, tags, artifacts, parent/child runs of sweeps."""
