"""Overlapping temporal-VAE decode chunks (SVD ``decode_overlap``): the chunk ranges and blend weights by math,
decoding through a frame-wise function is exact, ``decode_overlap=0`` is today's decode bit for bit, one chunk
covering the video ignores the overlap, and bad values are clear errors."""

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
import vidcore
from vidcore.pipelines.temporal_decode import blend_weights, decode_overlapping, overlapping_chunks


@pytest.mark.parametrize("frames,chunk,overlap", [(14, 8, 2), (25, 8, 4), (7, 3, 1), (5, 5, 4), (9, 4, 0), (3, 8, 2)])
def test_chunks_cover_the_video_and_weights_sum_to_one(frames, chunk, overlap):
    ranges = overlapping_chunks(frames, chunk, overlap)
    assert ranges[0][0] == 0 and ranges[-1][1] == frames
    assert all(end - start <= chunk for start, end in ranges)
    for (s0, e0), (s1, e1) in zip(ranges, ranges[1:]):
        assert s1 - s0 == chunk - overlap and e0 - s1 == min(overlap, e0 - s1)  # starts chunk - overlap apart
    total = torch.zeros(frames)
    for (start, end), w in zip(ranges, blend_weights(ranges)):
        total[start:end] += w
        assert (w > 0).all()
    torch.testing.assert_close(total, torch.ones(frames))
    if overlap == 0:
        assert ranges == [(s, min(s + chunk, frames)) for s in range(0, frames, chunk)]


def test_frame_wise_decoder_is_reproduced_exactly():
    z = torch.randn(11, 4, 3, 5)
    out = decode_overlapping(lambda part: part * 2 + 1, z, chunk=4, overlap=2)
    torch.testing.assert_close(out, z * 2 + 1)


def test_bad_overlap():
    with pytest.raises(ValueError, match="decode_overlap"):
        overlapping_chunks(10, 4, 4)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("svd-overlap") / "svd"
    tiny.build_tiny_svd_pipeline(folder)
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_overlap(pipe):
    latents = torch.randn(1, 7, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    disjoint = pipe.decode_latents(latents, 3)
    assert torch.equal(pipe.decode_latents(latents, 3, decode_overlap=0), disjoint)
    blended = pipe.decode_latents(latents, 3, decode_overlap=1)
    assert blended.shape == disjoint.shape and torch.isfinite(blended).all()
    # frame 0..1 come from the first chunk alone, as without overlap (the first chunk is the same)
    assert torch.equal(blended[:, :, :2], disjoint[:, :, :2])
    assert not torch.equal(blended, disjoint)
    whole = pipe.decode_latents(latents, 7)
    assert torch.equal(pipe.decode_latents(latents, 7, decode_overlap=3), whole)  # one chunk: nothing to blend
    image = PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 52, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="decode_overlap must be"):
        pipe(image, height=16, width=24, num_frames=3, num_inference_steps=1, decode_chunk_size=2, decode_overlap=2)


def test_benchmark_smallest_setting_reports_every_overlap():
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_svd_decode_overlap.py"
    sys.path.insert(0, str(script.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_svd_decode_overlap", script)
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        out = bench.main(["--tiny", "--frames", "7", "--chunk", "3", "--overlaps", "0,1", "--size", "4",
                          "--repeats", "1"])
    finally:
        sys.path.remove(str(script.parent))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()[2:]]
    assert [r[0] for r in rows] == ["0", "1"]
    assert all(float(r[1]) > 0 and float(r[3]) >= 0 and float(r[4]) > 0 for r in rows)


def test_cli_decode_overlap(tmp_path, capsys, monkeypatch):
    import vidcore.cli.generate
    from vidcore.cli import main

    folder = tmp_path / "svd"
    tiny.build_tiny_svd_pipeline(folder)
    PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 52, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames)
                        or str(path))
    argv = ["generate", "image-to-video", "--model", str(folder), "--image", str(tmp_path / "i.png"), "--height",
            "16", "--width", "24", "--frames", "5", "--steps", "1", "--device", "cpu", "--no-progress",
            "--decode-chunk-size", "2", "-o", str(tmp_path / "o.mp4")]
    assert main([*argv, "--decode-overlap", "1"]) == 0
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(vidcore.load_image(tmp_path / "i.png"), height=16, width=24, num_frames=5, num_inference_steps=1,
                    decode_chunk_size=2, decode_overlap=1, output_type="np",
                    generator=torch.Generator().manual_seed(0)).frames[0]
    assert np.abs(np.asarray(written[0]) - expected).max() < 1e-5
    assert main([*argv, "--decode-overlap", "2"]) == 2
    assert "decode_overlap must be" in capsys.readouterr().err
