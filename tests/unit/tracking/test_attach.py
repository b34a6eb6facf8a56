"""Run names say what was trained on: the data's own name where it has one (BCCD through the VOC reader)."""
from __future__ import annotations

from medexp.tracking.attach import default_run_name, run_tags


def test_a_bccd_run_is_named_after_bccd_not_the_voc_reader(make_cfg):
    assert default_run_name(make_cfg("experiment=bccd_cells")).startswith("retinanet-bccd-seed0-")
    assert default_run_name(make_cfg("data=pneumoniamnist")).startswith("cnn-pneumoniamnist-seed0-")
    assert default_run_name(make_cfg()).startswith("cnn-synthetic-seed0-")  # no data.name: the option chosen


def test_tags_become_run_tags(make_cfg):
    tags = run_tags(make_cfg("tags=[baseline,small data]"))
    assert tags["baseline"] == "true" and tags["small data"] == "true"
