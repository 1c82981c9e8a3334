"""``vidcore generate ... --prompts FILE --outdir DIR`` (issue #8): one video per prompt, named
NNNN_slug.FORMAT, seed --seed + N, prompt N on rank N % WORLD_SIZE, resumable, atomic, manifest from rank 0.

Ranks are simulated by running the CLI in-process with RANK / WORLD_SIZE set (no process group is used).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest

import tiny
import vidcore
from vidcore.cli import main
from vidcore.cli.outputs import slug as _slug

# 16 x 24 pixels, 3 frames, 1 step: well under a second per video on a CPU
SMALL = ["--height", "16", "--width", "24", "--frames", "3", "--steps", "1", "--device", "cpu", "--no-progress"]
PROMPTS = ["a panda eating bamboo", "", "# a comment line", "A Cat, riding a horse!", "  ", "ünïcode robot dancing"]
EXPECTED = ["0000_a-panda-eating-bamboo.mp4", "0001_a-cat-riding-a-horse.mp4", "0002_unicode-robot-dancing.mp4"]
SEED = 5


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VIDCORE_DEBUG", raising=False)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batch") / "tiny-t2v"
    tiny.build_tiny_t2v_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def batch(capsys, model, prompts_file, outdir, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, "generate", "text-to-video", "--model", model, "--prompts", prompts_file,
                   "--outdir", outdir, "--seed", SEED, *SMALL, *extra)


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def video_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".mp4", ".gif"))


def assert_no_temp_leftovers(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


@pytest.fixture(scope="module")
def world1(model, prompts_file, tmp_path_factory) -> tuple[Path, str]:
    """The world-size-1 batch output, shared by the tests that compare against it."""
    outdir = tmp_path_factory.mktemp("world1") / "videos"
    os.environ.pop("RANK", None), os.environ.pop("WORLD_SIZE", None)
    code = main(["generate", "text-to-video", "--model", str(model), "--prompts", str(prompts_file),
                 "--outdir", str(outdir), "--seed", str(SEED), *SMALL])
    assert code == 0
    return outdir


def test_slug():
    assert _slug("a panda eating bamboo") == "a-panda-eating-bamboo"
    assert _slug("  A/B\\C:..*?  ") == "a-b-c"
    assert _slug("Crème brûlée") == "creme-brulee"
    assert _slug("???") == "prompt" and _slug("日本") == "prompt"
    long = _slug("x " * 100)
    assert len(long) <= 48 and not long.endswith("-")


def test_world_size_1_equals_single_generate(capsys, model, world1, tmp_path):
    assert video_files(world1) == EXPECTED
    assert_no_temp_leftovers(world1)
    manifest = json.loads((world1 / "prompts.json").read_text(encoding="utf-8"))
    assert manifest == [
        {"index": 0, "prompt": "a panda eating bamboo", "seed": SEED, "file": EXPECTED[0]},
        {"index": 1, "prompt": "A Cat, riding a horse!", "seed": SEED + 1, "file": EXPECTED[1]},
        {"index": 2, "prompt": "ünïcode robot dancing", "seed": SEED + 2, "file": EXPECTED[2]},
    ]
    videos = [decode(world1 / name) for name in EXPECTED]
    for entry, video in zip(manifest, videos):
        single = tmp_path / f"single_{entry['index']}.mp4"
        code, out, err = run_cli(capsys, "generate", "text-to-video", "--model", model, "--prompt", entry["prompt"],
                                 "--seed", entry["seed"], "-o", single, *SMALL)
        assert code == 0, err
        assert video.shape == (3, 16, 24, 3)
        np.testing.assert_array_equal(video, decode(single))
    assert not np.array_equal(videos[0], videos[1])  # different prompts and seeds -> different videos


def test_two_ranks_union_equals_world_size_1(capsys, model, prompts_file, world1, tmp_path, monkeypatch):
    outdir = tmp_path / "videos"
    monkeypatch.setenv("WORLD_SIZE", "2")
    written = {}
    for rank in (1, 0):  # rank 1 first: it must not need rank 0's folder or manifest
        monkeypatch.setenv("RANK", str(rank))
        code, out, err = batch(capsys, model, prompts_file, outdir)
        assert code == 0, err
        written[rank] = sorted(Path(line).name for line in out.split())
        assert (outdir / "prompts.json").exists() == (rank == 0)  # rank 0 writes the manifest
    assert written == {0: [EXPECTED[0], EXPECTED[2]], 1: [EXPECTED[1]]}  # prompt i -> rank i % 2
    assert video_files(outdir) == EXPECTED
    assert (outdir / "prompts.json").read_text() == (world1 / "prompts.json").read_text()
    for name in EXPECTED:
        np.testing.assert_array_equal(decode(outdir / name), decode(world1 / name))
    assert_no_temp_leftovers(outdir)


def test_more_ranks_than_prompts(capsys, model, prompts_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")  # no prompt for rank 3: nothing to do, no model loaded
    monkeypatch.setattr("vidcore.pipelines.text_to_video.TextToVideoPipeline.from_pretrained",
                        lambda *a, **k: pytest.fail("rank without prompts loaded the model"))
    code, out, err = batch(capsys, model, prompts_file, tmp_path / "videos")
    assert (code, out) == (0, "")
    monkeypatch.setenv("RANK", "4")
    code, out, err = batch(capsys, model, prompts_file, tmp_path / "videos")
    assert code == 2 and "RANK=4 / WORLD_SIZE=4" in err


def test_resume_skips_existing_and_gif_format(capsys, model, prompts_file, tmp_path):
    outdir = tmp_path / "videos"
    outdir.mkdir()
    names = [n.replace(".mp4", ".gif") for n in EXPECTED]
    existing = outdir / names[1]
    existing.write_bytes(b"not really a gif")
    os.utime(existing, (1_000_000_000, 1_000_000_000))
    code, out, err = batch(capsys, model, prompts_file, outdir, "--format", "gif")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines == [f"skipped {existing} (exists)", str(outdir / names[0]), str(outdir / names[2])]
    assert existing.stat().st_mtime == 1_000_000_000 and existing.read_bytes() == b"not really a gif"
    assert video_files(outdir) == names
    assert len(vidcore.load_video(outdir / names[0])) == 3
    # everything exists now: a rerun only skips (and loads no model)
    code, out, err = batch(capsys, model, prompts_file, outdir, "--format", "gif")
    assert code == 0 and out.strip().splitlines() == [f"skipped {outdir / n} (exists)" for n in names]


def test_interrupted_write_leaves_no_partial_file(capsys, model, world1, tmp_path, monkeypatch):
    outdir = tmp_path / "videos"
    prompts_file = tmp_path / "one.txt"
    prompts_file.write_text("# the first prompt only\na panda eating bamboo\n", encoding="utf-8")
    calls = []
    real = av.VideoFrame

    class Interrupting:  # av.VideoFrame whose second frame is interrupted: the encoder has started writing
        @staticmethod
        def from_ndarray(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real.from_ndarray(*args, **kwargs)

    monkeypatch.setattr(av, "VideoFrame", Interrupting)
    code, out, err = batch(capsys, model, prompts_file, outdir)
    assert code == 130 and err.strip() == "error: interrupted"
    assert video_files(outdir) == []  # no partial file under the final name
    assert_no_temp_leftovers(outdir)
    assert len(calls) == 2
    monkeypatch.setattr(av, "VideoFrame", real)
    code, out, err = batch(capsys, model, prompts_file, outdir)  # the rerun completes the batch
    assert code == 0, err
    assert video_files(outdir) == EXPECTED[:1]
    np.testing.assert_array_equal(decode(outdir / EXPECTED[0]), decode(world1 / EXPECTED[0]))


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out + err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("extra, fragments", [
    (["--prompt", "a dog"], ["--prompts and --prompt"]),
    (["-o", "x.mp4"], ["-o/--output"]),
    (["--output", "x.mp4"], ["-o/--output"]),
    (["--parallel", "cfg"], ["--parallel"]),
    (["--num-videos", "2"], ["--num-videos"]),
])
def test_excluded_arguments(capsys, model, prompts_file, tmp_path, extra, fragments):
    outdir = tmp_path / "videos"
    assert_one_line_error(*batch(capsys, model, prompts_file, outdir, *extra), *fragments)
    assert not outdir.exists()  # checked before anything is written


def test_bad_prompts_files(capsys, model, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n   \n", encoding="utf-8")
    assert_one_line_error(*batch(capsys, model, empty, tmp_path / "out"), "no prompts", str(empty))
    missing = tmp_path / "missing.txt"
    assert_one_line_error(*batch(capsys, model, missing, tmp_path / "out"), "no such file", str(missing))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a dog\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "generate", "text-to-video", "--model", model, "--prompts", prompts, *SMALL)
    assert_one_line_error(code, out, err, "--outdir")
    code, out, err = run_cli(capsys, "generate", "text-to-video", "--model", model, *SMALL)
    assert_one_line_error(code, out, err, "--prompt is required")
    code, out, err = run_cli(capsys, "generate", "text-to-video", "--model", model, "--prompt", "a dog",
                             "--outdir", tmp_path, *SMALL)
    assert_one_line_error(code, out, err, "--outdir applies to --prompts")
    assert not (tmp_path / "out").exists()
