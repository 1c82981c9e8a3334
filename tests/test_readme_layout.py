"""The layout trees name what is there: README's short tree and the full one in docs/architecture.md. Every folder
and file either names exists, and every package and top-level module of vidcore (plus the repository's top-level
folders) has a line in both."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRY = re.compile(r"^(\S+/|\S+\.py)\s")  # a line that starts an entry: a folder or a module at column 0


TREES = ["README.md", "docs/architecture.md"]


def layout_entries(page: str = "README.md") -> dict[str, str]:
    """path -> its description, from the code block of the page's layout tree."""
    lines = (ROOT / page).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line == "```" and lines[i + 1].startswith("vidcore/"))
    end = lines.index("```", start + 1)
    block = "\n".join(lines[start + 1: end])
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        m = ENTRY.match(line)
        if m:
            current = m.group(1)
            entries[current] = line[m.end():]
        elif current is not None:
            entries[current] += " " + line.strip()
    return entries


@pytest.mark.parametrize("page", TREES)
def test_every_named_path_exists(page):
    missing = []
    for path, description in layout_entries(page).items():
        where = ROOT / path
        if not where.exists():
            missing.append(path)
            continue
        if where.is_dir():
            files = [p.relative_to(where).as_posix() for p in where.rglob("*.py")]
            for name in re.findall(r"[\w*/]+\.py\b", description):
                if name.startswith("vidcore/"):  # named from the repository root
                    if not (ROOT / name).is_file():
                        missing.append(name)
                elif not any(fnmatch.fnmatch(f, name) for f in files):
                    missing.append(f"{path}{name}")
    assert not missing, f"{page}'s layout tree names what is not there: {missing}"


@pytest.mark.parametrize("page", TREES)
def test_every_part_has_a_line(page):
    entries = layout_entries(page)
    parts = [f"vidcore/{p.name}/" for p in (ROOT / "vidcore").iterdir() if (p / "__init__.py").is_file()]
    parts += [f"vidcore/{p.name}" for p in (ROOT / "vidcore").glob("*.py") if p.name not in ("__init__.py",
                                                                                               "__main__.py")]
    parts += ["kernels/", "conversion/", "benchmarks/", "tests/", "docs/"]
    named = set(entries) | {n for d in entries.values() for n in re.findall(r"vidcore/[\w/]+\.py|vidcore/\w+/", d)}
    missing = sorted(p for p in parts if p not in named)
    assert not missing, f"{page}'s layout tree has no line for {missing}"


@pytest.mark.parametrize("page", TREES)
def test_the_parser_reads_entries(page):
    entries = layout_entries(page)
    assert "vidcore/nn/" in entries and "attention" in entries["vidcore/nn/"]
    assert len(entries) >= 10
