"""``medexp.reports.html_helpers``: the parts every report page is made of."""
from __future__ import annotations

import numpy as np

from medexp.reports.html_helpers import number_text, table_html, thumbnail_uri, write_page


def test_tables_escape_their_header_and_numbers_say_n_a():
    assert table_html(["a<b"], [["1"]]) == "<table><tr><th>a&lt;b</th></tr><tr><td>1</td></tr></table>"
    assert number_text(0.123456) == "0.1235" and number_text(None) == "n/a" and number_text(float("nan")) == "n/a"


def test_a_page_is_one_self_contained_file(tmp_path):
    uri = thumbnail_uri(np.full((1, 8, 8), 200, dtype=np.uint8), cam=np.ones((8, 8)))
    page = write_page(tmp_path / "report", "A & B", [f"<img src='{uri}'>"])
    text = page.read_text()
    assert page.name == "index.html" and "<title>A &amp; B</title>" in text
    assert "data:image/png;base64," in text and "http" not in text
