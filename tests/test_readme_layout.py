"""README's layout tree ("How it is built") names what is there: every folder and file it names exists, and
every package and top-level module of vidcore (plus the repository's top-level folders) has a line."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = re.compile(r"^(\S+/|\S+\.py)\s")  # a line that starts an entry: a folder or a module at column 0


def layout_entries() -> dict[str, str]:
    """path -> its description, from the code block of README's layout tree."""
    lines = (ROOT / "README.md").read_text().splitlines()
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


def test_every_named_path_exists():
    missing = []
    for path, description in layout_entries().items():
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
    assert not missing, f"README's layout tree names what is not there: {missing}"


def test_every_part_has_a_line():
    entries = layout_entries()
    parts = [f"vidcore/{p.name}/" for p in (ROOT / "vidcore").iterdir() if (p / "__init__.py").is_file()]
    parts += [f"vidcore/{p.name}" for p in (ROOT / "vidcore").glob("*.py") if p.name not in ("__init__.py",
                                                                                               "__main__.py")]
    parts += ["kernels/", "conversion/", "benchmarks/", "tests/"]
    named = set(entries) | {n for d in entries.values() for n in re.findall(r"vidcore/[\w/]+\.py|vidcore/\w+/", d)}
    missing = sorted(p for p in parts if p not in named)
    assert not missing, f"README's layout tree has no line for {missing}"


def test_the_parser_reads_entries():
    entries = layout_entries()
    assert "vidcore/nn/" in entries and "attention" in entries["vidcore/nn/"]
    assert len(entries) >= 10
