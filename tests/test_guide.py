"""diffusers' "Text or image-to-video" guide, run with ``vidcore`` in place of ``diffusers`` (issue #28).

Each section (or tab) of the guide runs in its own namespace, its blocks in document order, edited only by the fixed
table in ``tests/guide.py`` (the imports; no CUDA; fp16 -> fp32; the sizes of the tiny stand-ins). The hub ids, the
space's videos and the image URLs resolve offline to tiny random stand-ins under the guide's names. The same blocks
then run with diffusers; where diffusers still runs a block, the frames must agree. The guide is read from
``../shared`` at run time; without it the module is skipped.
"""

from __future__ import annotations

import io
import urllib.request

import numpy as np
import PIL.Image
import pytest
import torch

import guide

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not guide.GUIDE.is_file(), reason=f"the guide is not at {guide.GUIDE}")]

TEXT = guide.GUIDE.read_text() if guide.GUIDE.is_file() else ""
SPACES, DIFFS = guide.read_guide(TEXT) if TEXT else ([], [])
NAMESPACES = SPACES + [guide.apply_diff(d, SPACES) for d in DIFFS]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return guide.build_offline_hub(tmp_path_factory.mktemp("guide"), TEXT)


@pytest.fixture
def offline_hub(hub, monkeypatch, tmp_path):
    """The stand-ins where the guide's code looks: the Hugging Face cache (offline) and the image URLs."""
    import huggingface_hub.constants
    import requests

    cache, urls = hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def served(url):
        if url not in urls:
            raise AssertionError(f"the guide reads {url}, which has no stand-in")
        return urls[url].read_bytes()

    class Response(io.BytesIO):  # what urllib.request.urlopen / requests.get(..., stream=True) hand back
        def __init__(self, data):
            super().__init__(data)
            self.raw = io.BytesIO(data)
            self.content = data

        def __enter__(self):
            return self

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Response(served(url)))
    monkeypatch.setattr(requests, "get", lambda url, **kwargs: Response(served(url)))
    monkeypatch.chdir(tmp_path)  # the guide writes generated.mp4, animation.gif ... to the working folder
    return cache


def run(space: guide.Namespace, library: str) -> dict:
    """Run the namespace's blocks, edited for ``library``, in one namespace; return the namespace."""
    scope: dict = {"__name__": f"guide ({library})"}
    for block in space.blocks:
        code = guide.edit(block.code, library)
        exec(compile(code, f"{guide.GUIDE.name}:{block.line} ({library})", "exec"), scope)
    return scope


def outputs(scope: dict) -> dict[str, np.ndarray]:
    """The frames / images the blocks left in the namespace: PIL lists as uint8 arrays, "np" output as it is."""
    found = {}
    for name in guide.OUTPUTS:
        value = scope.get(name)
        if isinstance(value, list) and value and isinstance(value[0], PIL.Image.Image):
            found[name] = np.stack([np.asarray(image.convert("RGB")) for image in value])
        elif isinstance(value, np.ndarray):
            found[name] = value
    return found


def assert_same_frames(ours: np.ndarray, theirs: np.ndarray, name: str) -> None:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (name, ours.shape, theirs.shape)
    if ours.dtype == np.uint8:
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        # float32 on both sides; a pixel may round the other way at a .5 boundary
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (name, diff.max(), (diff > 0).mean())
    else:
        assert np.abs(ours - theirs).max() < 1e-4, (name, np.abs(ours - theirs).max())


@pytest.mark.parametrize("space", NAMESPACES, ids=[s.name for s in NAMESPACES])
def test_guide_section_runs_with_vidcore(space, offline_hub, record_property):
    # compiled code from earlier tests (the docs' torch.compile example) would make this compile a recompile, which
    # turns on dynamic shapes: start from dynamo's empty cache, as a fresh process does
    torch._dynamo.reset()
    torch.manual_seed(0)
    ours = outputs(run(space, "vidcore"))
    assert ours, f"{space.name}: the blocks left no frames or images"
    assert all(v.size and np.isfinite(v).all() for v in ours.values())
    record_property("blocks", [b.line for b in space.blocks])

    torch.manual_seed(0)
    try:
        theirs = outputs(run(space, "diffusers"))
    except Exception as error:  # diffusers 0.42 no longer runs some of its own guide
        record_property("diffusers", f"does not run: {type(error).__name__}: {error}")
        print(f"{space.name}: vidcore ran {len(space.blocks)} blocks; diffusers does not run them "
              f"({type(error).__name__}: {str(error)[:200]})")
        return
    assert theirs.keys() == ours.keys()
    for name in ours:
        assert_same_frames(ours[name], theirs[name], name)
    record_property("diffusers", "equal")
    print(f"{space.name}: vidcore ran {len(space.blocks)} blocks; equal to diffusers ({', '.join(ours)})")


def test_the_guide_is_read_whole():
    """The parser found every Python block of the guide, so none is silently left out."""
    blocks = TEXT.count("```py")
    assert sum(len(s.blocks) for s in SPACES) == blocks and blocks >= 10
    assert len(DIFFS) == TEXT.count("```diff") >= 1
