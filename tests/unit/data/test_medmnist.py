"""A failed download into a mistyped data.root leaves no folder behind, and says what to do in one line."""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from medexp.data.medmnist import MedMNISTDataModule, download
from medexp.errors import DataError


def refuse(*args, **kwargs):
    raise urllib.error.URLError("no network")


def test_a_failed_download_removes_the_folders_it_made(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(urllib.error.URLError):
        download("https://example.org/x.npz", tmp_path / "typo" / "deeper" / "x.npz")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_download_keeps_a_folder_that_was_there(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    (tmp_path / "data").mkdir()
    with pytest.raises(urllib.error.URLError):
        download("https://example.org/x.npz", tmp_path / "data" / "x.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["data"] and list((tmp_path / "data").iterdir()) == []


def test_a_mistyped_root_is_one_line_and_no_empty_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    data = MedMNISTDataModule("pneumoniamnist", str(tmp_path / "medmnsit"), batch_size=8, num_classes=2,
                              in_channels=1, spatial_dims=2, image_size=28)
    with pytest.raises(DataError, match="not found and downloading it failed .* or set data.root to its folder"):
        data.setup()
    assert not (tmp_path / "medmnsit").exists()
