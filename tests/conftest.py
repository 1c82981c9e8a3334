"""Shared pytest setup.

``tests/`` is not a package: this file puts it on ``sys.path`` so test files can ``import tiny``
(the tiny-model harness, see tests/tiny.py). Nothing here imports diffusers at import time.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in the interpreter; the variable must be set before triton is
# imported anywhere (kernels/ imports it), so it is set here, first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

# The repository root holds kernels/ and conversion/, which ship as vidcore.kernels and vidcore.conversion.
# On sys.path (``python -m pytest`` puts the working directory there) they would shadow PyPI's `kernels`
# (imported by diffusers and transformers), so the tests import vidcore as installed, as users do.
REPO_ROOT = TESTS_DIR.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO_ROOT]
_early = sys.modules.get("kernels")
assert _early is None or not str(getattr(_early, "__file__", "")).startswith(str(REPO_ROOT)), (
    "the repository's kernels/ folder was imported as the top-level `kernels` package")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): CI shares 2
    cores, and on tiny tensors oversubscribed torch threads spin against each other, many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def offline(monkeypatch):
    """No hub traffic (a missing local path must never reach the network) and tracebacks off, as users get."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VIDCORE_DEBUG", raising=False)


@pytest.fixture
def tiny_t2v(tmp_path):
    """A random tiny diffusers TextToVideoSDPipeline saved (normal + fp16 variant) under tmp_path:
    ``tiny.TinyPipeline(pipe, folder)``."""
    import tiny

    folder = tmp_path / "tiny-t2v"
    return tiny.TinyPipeline(tiny.build_tiny_t2v_pipeline(folder, variant_fp16=True), folder)


@pytest.fixture
def tiny_v2v(tmp_path):
    """As ``tiny_t2v`` for VideoToVideoSDPipeline (same weights for the same seed)."""
    import tiny

    folder = tmp_path / "tiny-v2v"
    return tiny.TinyPipeline(tiny.build_tiny_v2v_pipeline(folder, variant_fp16=True), folder)
