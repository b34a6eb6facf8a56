"""Config values a run uses are checked before anything opens: a non-finite learning rate is refused in one line."""
from __future__ import annotations

import pytest

from medexp.errors import ConfigError
from medexp.workflows.lifecycle import check_config_values


@pytest.mark.parametrize("lr", [float("inf"), float("-inf"), float("nan"), 0.0, -1e-3])
def test_a_learning_rate_that_cannot_train_is_refused(lr):
    with pytest.raises(ConfigError, match=r"optimizer.lr=.* is not valid: it must be a number > 0"):
        check_config_values({"optimizer": {"lr": lr}})


def test_a_finite_positive_learning_rate_passes():
    check_config_values({"optimizer": {"lr": 3e-4, "weight_decay": 0.0}})
