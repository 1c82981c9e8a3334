import functools
import http.server
import threading

import av
import numpy as np
import PIL.Image
import pytest
import torch

from vidcore.io import export_to_gif, export_to_video, load_image, load_video

COLOR = (200, 40, 90)


def solid(n, h, w, color=COLOR):
    return [np.full((h, w, 3), color, np.uint8) for _ in range(n)]


def ramp(n, h, w):
    """Frames that differ from each other (float in [0, 1])."""
    return [np.full((h, w, 3), (i + 1) / (n + 1), np.float32) for i in range(n)]


def decode(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return frames, s.average_rate, s.codec_context.name, s.codec_context.pix_fmt


# ----------------------------------------------------------------------------- export_to_video


def test_mp4_roundtrip_solid_color(tmp_path):
    path = export_to_video(solid(5, 32, 48), tmp_path / "out.mp4", fps=8)
    assert path == str(tmp_path / "out.mp4")
    frames, rate, codec, pix_fmt = decode(path)
    assert (len(frames), rate, codec, pix_fmt) == (5, 8, "h264", "yuv420p")
    assert frames[0].shape == (32, 48, 3)
    for f in frames:
        assert np.abs(f.reshape(-1, 3).mean(0) - COLOR).max() < 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temp file left behind


def test_mp4_odd_size_is_padded(tmp_path):
    frames = np.zeros((3, 33, 47, 3), np.uint8)
    frames[:, :, -1] = 255  # last column white -> the padding column repeats it
    out, _, _, _ = decode(export_to_video(frames, tmp_path / "odd.mp4"))
    assert len(out) == 3 and out[0].shape == (34, 48, 3)
    assert out[0][:, -1].mean() > 230 and out[0][:, :40].mean() < 10


@pytest.mark.parametrize("layout", ["fchw", "fhwc", "list_pil", "list_float"])
def test_mp4_input_forms(tmp_path, layout):
    base = np.stack(solid(4, 16, 24)).astype(np.float32) / 255  # f h w c
    frames = {
        "fchw": torch.from_numpy(base).permute(0, 3, 1, 2),
        "fhwc": torch.from_numpy(base),
        "list_pil": [PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in base],
        "list_float": list(base),
    }[layout]
    out, _, _, _ = decode(export_to_video(frames, tmp_path / "v.mp4"))
    assert len(out) == 4 and out[0].shape == (16, 24, 3)
    assert np.abs(out[0].reshape(-1, 3).mean(0) - COLOR).max() < 4


def test_mp4_fractional_fps_quality_and_bitrate(tmp_path):
    rng = np.random.default_rng(0)
    noisy = rng.random((6, 32, 32, 3)).astype(np.float32)
    _, rate, _, _ = decode(export_to_video(noisy, tmp_path / "a.mp4", fps=7.5))
    assert rate == 7.5
    small = export_to_video(noisy, tmp_path / "q0.mp4", quality=0)
    big = export_to_video(noisy, tmp_path / "q10.mp4", quality=10)
    assert (tmp_path / "q10.mp4").stat().st_size > 2 * (tmp_path / "q0.mp4").stat().st_size
    assert len(decode(small)[0]) == len(decode(big)[0]) == 6
    assert len(decode(export_to_video(noisy, tmp_path / "b.mp4", bitrate=200_000))[0]) == 6


def test_mp4_default_path_and_no_extension(tmp_path):
    path = export_to_video(solid(2, 8, 8))
    assert path.endswith(".mp4") and len(decode(path)[0]) == 2
    assert len(decode(export_to_video(solid(2, 8, 8), tmp_path / "sub" / "noext"))[0]) == 2


def test_failed_export_leaves_nothing(tmp_path):
    with pytest.raises(Exception):
        export_to_video(solid(2, 8, 8), tmp_path / "x.mp4", codec="no_such_codec")
    assert list(tmp_path.iterdir()) == []


def test_export_errors():
    with pytest.raises(ValueError, match="empty"):
        export_to_video([])
    with pytest.raises(ValueError, match="empty"):
        export_to_video(np.zeros((0, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"shape \(F, H, W, 3\)"):
        export_to_video(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=r"frames\[0\]"):
        export_to_video(torch.zeros(1, 2, 3, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        export_to_video([np.zeros((8, 8, 3)), np.zeros((8, 10, 3))])
    with pytest.raises(ValueError, match="NaN"):
        export_to_video(np.full((2, 8, 8, 3), np.nan))
    with pytest.raises(ValueError, match="PIL images, numpy arrays or torch tensors"):
        export_to_video([np.zeros((8, 8, 3)), "frame"])
    with pytest.raises(ValueError, match="quality"):
        export_to_video(solid(2, 8, 8), quality=11)
    with pytest.raises(ValueError, match="fps"):
        export_to_video(solid(2, 8, 8), fps=0)


# ----------------------------------------------------------------------------- gif


def test_gif_roundtrip(tmp_path):
    path = export_to_gif(ramp(4, 10, 12), tmp_path / "a.gif", fps=10)
    with PIL.Image.open(path) as gif:
        assert gif.n_frames == 4
        assert gif.info["duration"] == 100 and gif.info["loop"] == 0
        gif.seek(2)
        assert abs(np.asarray(gif.convert("RGB")).mean() - 255 * 3 / 5) < 3


def test_export_to_video_dispatches_gif(tmp_path):
    path = export_to_video(solid(3, 8, 8), tmp_path / "a.GIF", fps=4)
    with PIL.Image.open(path) as gif:
        assert gif.format == "GIF"
        assert np.abs(np.asarray(gif.convert("RGB"))[0, 0].astype(int) - COLOR).max() <= 2


# ----------------------------------------------------------------------------- load_video


def test_load_video_mp4(tmp_path):
    path = export_to_video(solid(5, 16, 24), tmp_path / "a.mp4", fps=10)
    frames, fps = load_video(path, return_fps=True)
    assert fps == 10 and len(frames) == 5
    assert all(f.mode == "RGB" and f.size == (24, 16) for f in frames)
    assert np.abs(np.asarray(frames[-1]).reshape(-1, 3).mean(0) - COLOR).max() < 4
    assert len(load_video(tmp_path / "a.mp4", convert_method=lambda fs: fs[:2])) == 2


def test_load_video_gif(tmp_path):
    path = export_to_gif(ramp(3, 10, 12), tmp_path / "a.gif", fps=5)
    frames, fps = load_video(path, return_fps=True)
    assert fps == 5 and len(frames) == 3 and frames[1].mode == "RGB"
    assert abs(np.asarray(frames[1]).mean() - 255 / 2) < 3


def test_load_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_video(tmp_path / "missing.mp4")
    (tmp_path / "bad.mp4").write_text("not a video")
    with pytest.raises(ValueError, match="could not read a video"):
        load_video(tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="path or an http"):
        load_video(123)


# ----------------------------------------------------------------------------- load_image


def test_load_image_from_path_and_pil(tmp_path):
    rgba = PIL.Image.new("RGBA", (6, 4), COLOR + (128,))
    rgba.save(tmp_path / "a.png")
    for source in (str(tmp_path / "a.png"), tmp_path / "a.png", rgba):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (6, 4) and image.getpixel((0, 0)) == COLOR
    assert rgba.mode == "RGBA"  # input not modified
    assert load_image(rgba, convert_method=lambda im: im.convert("L")).mode == "L"


def test_load_image_applies_exif_orientation(tmp_path):
    image = PIL.Image.new("RGB", (6, 4))
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "a.jpg", exif=exif)
    assert load_image(tmp_path / "a.jpg").size == (4, 6)


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="could not read an image"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="path, an http"):
        load_image(np.zeros((4, 4, 3)))


# ----------------------------------------------------------------------------- URLs (local server)


@pytest.fixture
def served(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_load_from_url(served):
    folder, url = served
    PIL.Image.new("RGB", (5, 3), COLOR).save(folder / "a.png")
    export_to_video(solid(3, 8, 8), folder / "a.mp4", fps=6)
    assert load_image(f"{url}/a.png").getpixel((1, 1)) == COLOR
    frames, fps = load_video(f"{url}/a.mp4", return_fps=True)
    assert len(frames) == 3 and fps == 6
    with pytest.raises(ValueError, match="could not download"):
        load_image(f"{url}/missing.png")
