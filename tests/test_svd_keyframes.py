"""SVD keyframe interpolation (``last_image``, bidirectional sampling): without it the run is today's bit for bit;
with it the first and last frames end nearer their keyframes than runs conditioned on the other keyframe only
(a synthetic denoiser with a known answer, margins computed here); a real tiny SVD runs and the CLI forwards
``--last-image``."""

import math

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
import vidcore

SMALL = dict(height=16, width=24, num_frames=5, num_inference_steps=6, output_type="latent")


def picture(seed):
    return PIL.Image.fromarray(np.random.RandomState(seed).randint(0, 256, (40, 52, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("svd-keyframes") / "svd"
    tiny.build_tiny_svd_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(folder):
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, image, seed=0, **kwargs):
    return pipe(image, generator=torch.Generator().manual_seed(seed), **{**SMALL, **kwargs}).frames


def test_without_last_image_the_run_is_unchanged(pipe):
    plain = run(pipe, picture(0))
    assert torch.equal(run(pipe, picture(0), last_image=None), plain)
    both = run(pipe, picture(0), last_image=picture(1))
    assert both.shape == plain.shape and torch.isfinite(both).all() and not torch.equal(both, plain)


class KnownDenoiser:
    """A stand-in for SVD's UNet whose clean estimate is known: frame j is the conditioning image's latent
    weighted by 1 - j / (f - 1) plus the Wiener denoise x / (sigma^2 + 1) of the input for the rest (so frame 0
    copies the keyframe and the far frames keep what the trajectory holds), returned as SVD's v-prediction."""

    def __init__(self):
        self.conds = []

    def __call__(self, model_in, t, image_embeddings, added_time_ids):
        # model_in: b f (4 + 4) h w, the noisy half scaled by 1 / sqrt(sigma^2 + 1); t = log(sigma) / 4
        sigma = math.exp(4 * float(t))
        scale = (sigma**2 + 1) ** 0.5
        x, cond = model_in[:, :, :4] * scale, model_in[:, :, 4:]
        self.conds.append(cond[:, 0])
        f = x.shape[1]
        w = (1 - torch.arange(f, dtype=x.dtype) / (f - 1)).view(1, f, 1, 1, 1)
        x0 = w * cond + (1 - w) * x / (sigma**2 + 1)
        return (x / (sigma**2 + 1) - x0) * scale / sigma  # v such that the scheduler's x0 is the one above


def test_first_and_last_frames_reach_their_keyframes(pipe, monkeypatch):
    oracle = KnownDenoiser()
    monkeypatch.setattr(pipe.unet, "forward", oracle)
    a, b = picture(0), picture(1)
    kwargs = dict(max_guidance_scale=1.0)  # no guidance: the oracle's answer is used as it is
    both = run(pipe, a, last_image=b, **kwargs)
    lat_a, lat_b = oracle.conds[0][0], oracle.conds[1][0]  # the forward pass sees a, the backward pass b
    only_a, only_b = run(pipe, a, **kwargs), run(pipe, b, **kwargs)

    def dist(frame, target):
        return float((frame - target).pow(2).mean().sqrt())

    margin = 0.25 * dist(lat_a, lat_b)  # a quarter of the keyframes' own distance
    assert dist(both[0, -1], lat_b) + margin < dist(only_a[0, -1], lat_b)  # last frame: nearer b than a run from a
    assert dist(both[0, 0], lat_a) + margin < dist(only_b[0, 0], lat_a)  # first frame: nearer a than a run from b
    assert dist(both[0, 0], lat_a) < margin and dist(both[0, -1], lat_b) < margin


def test_last_image_errors(pipe):
    with pytest.raises(ValueError, match="one last_image per image"):
        run(pipe, [picture(0), picture(1)], last_image=picture(2))


def test_cli_last_image(folder, pipe, tmp_path, monkeypatch):
    import vidcore.cli.generate
    from vidcore.cli import main

    picture(0).save(tmp_path / "a.png")
    picture(1).save(tmp_path / "b.png")
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames)
                        or str(path))
    assert main(["generate", "image-to-video", "--model", str(folder), "--image", str(tmp_path / "a.png"),
                 "--last-image", str(tmp_path / "b.png"), "--height", "16", "--width", "24", "--frames", "3",
                 "--steps", "2", "--device", "cpu", "--no-progress", "-o", str(tmp_path / "o.mp4")]) == 0
    expected = pipe(vidcore.load_image(tmp_path / "a.png"), last_image=vidcore.load_image(tmp_path / "b.png"),
                    height=16, width=24, num_frames=3, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0)).frames[0]
    assert np.abs(np.asarray(written[0]) - expected).max() < 1e-5
