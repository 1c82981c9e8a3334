"""Packaging: the wheel holds one import package, ``vidcore``; the repository's kernels/ and conversion/
folders ship inside it as ``vidcore.kernels`` and ``vidcore.conversion``, so Hugging Face's ``kernels``
package (imported by diffusers and transformers) and ours live side by side; the license is SPDX."""

import email
import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"vidcore": "vidcore", "kernels": "vidcore/kernels", "conversion": "vidcore/conversion"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                   check=True, cwd=out)
    (path,) = out.glob("vidcore-*.whl")
    return zipfile.ZipFile(path)


def test_wheel_holds_only_vidcore(wheel):
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"vidcore"}
    # every source file of the three folders is in the wheel, at its vidcore.* place
    for folder, target in SHIPPED.items():
        for py in (ROOT / folder).rglob("*.py"):
            rel = py.relative_to(ROOT / folder).as_posix()
            assert f"{target}/{rel}" in names, f"{folder}/{rel} is missing from the wheel"
    assert "vidcore/demo/model/unet/diffusion_pytorch_model.safetensors" in names


def test_license_is_spdx(wheel):
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    message = email.message_from_bytes(wheel.read(meta))
    assert message["License-Expression"] == "Apache-2.0"
    assert message["License"] is None  # the deprecated free-text field


COEXIST = """
import importlib, sys
from pathlib import Path
import vidcore.kernels, vidcore.conversion.engine
kernels = importlib.import_module("kernels")  # Hugging Face's package
root = Path(sys.argv[1])
theirs = Path(kernels.__file__).resolve()
assert root / "kernels" not in theirs.parents, theirs
assert hasattr(kernels, "get_kernel"), "not Hugging Face's kernels package"
assert Path(vidcore.kernels.__file__).resolve() == root / "kernels" / "__init__.py"
assert callable(vidcore.kernels.temporal_attention_reference)
assert vidcore.conversion.engine.KeyMap
assert "conversion" not in sys.modules
"""


def test_hf_kernels_and_vidcore_kernels_coexist():
    """In this (test) process, and in a fresh one started outside the repository as a user would."""
    import vidcore.kernels

    kernels = importlib.import_module("kernels")  # Hugging Face's package (the name vidcore must not take)
    assert ROOT / "kernels" not in Path(kernels.__file__).resolve().parents
    assert hasattr(kernels, "get_kernel")
    assert Path(vidcore.kernels.__file__).resolve() == ROOT / "kernels" / "__init__.py"
    assert kernels is not vidcore.kernels


def test_hf_kernels_coexist_in_a_fresh_process(tmp_path):
    subprocess.run([sys.executable, "-c", COEXIST, str(ROOT)], check=True, cwd=tmp_path)


def test_no_top_level_kernels_or_conversion_imports():
    import re

    pattern = re.compile(r"^\s*(import (kernels|conversion)\b|from (kernels|conversion)(\.| import))"
                         r"|(__import__|import_module)\([\"'](kernels|conversion)\b", re.M)
    hits = [str(p.relative_to(ROOT)) for d in ("vidcore", "kernels", "conversion", "tests", "benchmarks")
            for p in (ROOT / d).rglob("*.py") if p.name != "test_packaging.py" and pattern.search(p.read_text())]
    assert not hits, hits
