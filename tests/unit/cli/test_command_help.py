"""--help of the checkpoint commands (medexp-eval, medexp-export): their own options, as medexp-predict's."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("script", ["medexp-eval", "medexp-export"])
def test_help_lists_the_command_s_own_options_not_the_training_groups(script):
    done = subprocess.run([str(Path(sys.executable).parent / script), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.startswith(f"{script}:") and "ckpt_path" in done.stdout
    assert "Configuration groups" not in done.stdout and "hparams_search" not in done.stdout
