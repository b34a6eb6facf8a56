"""Loader workers: ``auto`` sized to the cores each training process gets, started without ``fork``."""
import pytest

from medexp.data import workers
from medexp.errors import ConfigError


@pytest.mark.parametrize(("cores", "processes", "expected"), [(1, 1, 0), (2, 1, 1), (2, 2, 0), (16, 1, 4), (16, 4, 3),
                                                              (64, 8, 4)])
def test_auto_leaves_a_core_to_each_training_process_and_caps_at_four(monkeypatch, cores, processes, expected):
    monkeypatch.setattr(workers, "available_cores", lambda: cores)
    assert workers.loader_workers("auto", processes) == expected


def test_a_number_is_kept_and_anything_else_is_one_line():
    assert workers.loader_workers(3) == 3
    for bad in (-1, "four", 1.5, True):
        with pytest.raises(ConfigError, match="data.num_workers"):
            workers.loader_workers(bad)


def test_workers_start_from_a_fork_server_not_a_fork():
    assert workers.worker_context().get_start_method() == "forkserver"
