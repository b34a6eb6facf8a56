"""The docs stay true: the config reference matches conf/, and the pages the guide links to exist."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_config_reference_is_current():
    done = subprocess.run([sys.executable, "docs/make_config_reference.py", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_config_option_is_in_the_reference():
    text = (REPO / "docs" / "config-reference.md").read_text()
    for path in (REPO / "conf").rglob("*.yaml"):
        if path.parent != REPO / "conf":
            assert f"`{path.parent.relative_to(REPO / 'conf')}={path.stem}`" in text, path


def test_links_in_the_guide_resolve():
    for page in (REPO / "docs").rglob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).resolve().is_file(), f"{page.name} links to missing {target}"
