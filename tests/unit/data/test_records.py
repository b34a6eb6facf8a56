"""``medexp.data.records``: the file stem that names a case."""
from __future__ import annotations

from pathlib import Path

from medexp.data.records import file_stem


def test_file_stem_counts_nii_gz_as_one_extension():
    assert file_stem(Path("/d/hippocampus_001.nii.gz")) == "hippocampus_001"
    assert file_stem(Path("/d/Image_01L.PNG")) == "Image_01L"
    assert file_stem(Path("/d/case.NII.GZ")) == "case"
    assert file_stem(Path("/d/a.b.jpg")) == "a.b"
