"""The docs/ site builds with ``mkdocs build --strict``: a broken link, a missing anchor or a page left out of the
navigation fails the suite. CI installs mkdocs with the ``docs`` extra (``pip install -e ".[test,docs]"``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"),
                             "--config-file", str(ROOT / "mkdocs.yml")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    pages = {p.relative_to(ROOT / "docs").with_suffix("").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    for page in pages:
        built = tmp_path / "site" / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.is_file(), f"docs/{page}.md was not built"


def test_every_page_is_in_the_navigation():
    import re

    nav = set(re.findall(r":\s*([\w/-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.MULTILINE))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages == nav, f"pages not in mkdocs.yml's nav: {sorted(pages - nav)}; nav entries with no page: " \
                         f"{sorted(nav - pages)}"


def test_readme_links_resolve():
    """README.md is outside the site; its relative links (into docs/ and the repository) must name files."""
    import re

    text = (ROOT / "README.md").read_text()
    links = [target.split("#")[0] for target in re.findall(r"\]\(([^)]+)\)", text) if "://" not in target]
    missing = [link for link in links if link and not (ROOT / link).exists()]
    assert links and not missing, f"README.md links to what is not there: {missing}"


def test_readme_is_short_and_results_lead_with_current_figures():
    """Issue #31: a README read in five minutes (<= 200 lines); RESULTS.md's first screen is the current figures."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines()
    assert "## Current figures" in results[:15], "benchmarks/RESULTS.md must open with its current-figures table"
    assert (ROOT / "benchmarks" / "history.md").is_file()
