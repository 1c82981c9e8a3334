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
