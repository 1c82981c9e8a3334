"""Every example of the documentation runs (issue #31): each ```python block of README.md and docs/**/*.md runs on
tiny offline stand-ins of the hub models it names, and each ``vidcore ...`` command line of the bash blocks is
parsed by the real argument parser (not run). ``tests/docs_examples.py`` says how blocks are read and edited.
"""

from __future__ import annotations

import io
import urllib.request

import pytest
import torch

import docs_examples as dx

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCKS = dx.python_blocks()
CLI = dx.cli_lines()
RAN: list[str] = []


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return dx.build_docs_hub(tmp_path_factory.mktemp("docs_hub"))


@pytest.fixture(scope="module")
def namespaces():
    return {}  # block name -> the namespace it left (for a following "continued" block)


@pytest.fixture
def offline(hub, monkeypatch, tmp_path):
    import huggingface_hub.constants

    cache, files = hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(url, *args, **kwargs):
        raise AssertionError(f"a documented example reads {url}: give it a local stand-in")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.chdir(tmp_path)
    return tmp_path, files


def previous_block(block: dx.Block) -> dx.Block:
    same_page = [b for b in BLOCKS if b.page == block.page and b.line < block.line]
    assert same_page, f"{block.name} is marked continued but is the first block of its page"
    return same_page[-1]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """A block that compiles (docs/speed.md) leaves dynamo's cache to the tests after it: drop it."""
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_python_block_runs(block, offline, namespaces):
    if block.continued:
        before = previous_block(block)
        if before.name not in namespaces:
            pytest.fail(f"{block.name} continues {before.name}, which did not run (run the page's blocks in order)")
        scope = namespaces[before.name]
    else:
        scope = {"__name__": "docs_example"}
    folder, files = offline
    dx.write_media(block.code, folder)
    dx.link_files(block.code, files, folder)
    # a multi-process example runs on CPU processes (gloo): one machine rarely has a GPU per process
    code = dx.edit(block.code, cuda=torch.cuda.is_available() and not block.processes)
    if block.processes:
        run_distributed(block, code, folder)
    else:
        exec(compile(code, block.name, "exec"), scope)
    namespaces[block.name] = scope
    RAN.append(block.name)


def run_distributed(block: dx.Block, code: str, folder) -> None:
    """A multi-process example as the docs say to run it: a script under torch.distributed.run, on CPU (gloo)."""
    import os
    import subprocess
    import sys

    import huggingface_hub.constants

    script = folder / "example.py"
    script.write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": huggingface_hub.constants.HF_HUB_CACHE,
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                             str(block.processes), str(script)], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{block.name} under torch.distributed.run failed:\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"


@pytest.mark.parametrize("where,argv", CLI, ids=[w for w, _ in CLI])
def test_cli_line_parses(where, argv):
    from vidcore.cli import build_parser

    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"{where}: `vidcore {' '.join(argv)}` is refused by the argument parser (exit {exit_.code})")


def test_every_block_is_collected():
    assert len(BLOCKS) >= 30 and len(CLI) >= 30
    assert {b.page for b in BLOCKS} >= {"README.md", "docs/index.md", "docs/fine-tuning.md"}
    for block in BLOCKS:  # the marker drops single lines that need CUDA, nothing else
        for line in block.code.splitlines():
            if dx.GPU_ONLY in line:
                assert "cuda" in line or "offload" in line, f"{block.name}: {line.strip()} is not a GPU-only line"


def test_report_blocks_run(request):
    """Last in the module: how many blocks ran, on the terminal (also under -q) and in the test report."""
    selected = [item for item in request.session.items if item.name.startswith("test_python_block_runs[")]
    line = f"docs examples: {len(RAN)} of {len(BLOCKS)} Python blocks ran ({len(selected)} selected); " \
           f"{len(CLI)} vidcore command lines parsed"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(line)
    request.node.user_properties.append(("python_blocks_run", len(RAN)))
