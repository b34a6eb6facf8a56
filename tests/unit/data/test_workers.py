"""Loader workers: ``auto`` sized to the cores each training process gets, started without ``fork``."""
import pytest
import torch

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


class _Tensors(torch.utils.data.Dataset):
    """A memory cache in miniature: one small tensor per case, handed to the worker with the dataset."""

    def __init__(self, count: int) -> None:
        self.cases = [torch.full((4,), float(i)) for i in range(count)]

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.cases[index]


def test_a_worker_receives_a_cache_of_more_tensors_than_the_fork_server_passes_descriptors():
    # HC18's 999 cached cases (3 tensors each) stopped the first worker with "too many fds": the fork server
    # passes at most 256 file descriptors to a new process
    loader = torch.utils.data.DataLoader(_Tensors(600), batch_size=200, num_workers=1,
                                         multiprocessing_context=workers.worker_context())
    assert torch.cat(list(loader))[:, 0].tolist() == [float(i) for i in range(600)]
