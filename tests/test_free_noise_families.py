"""FreeNoise and prompt travel on the pipelines diffusers has no FreeNoise for (ModelScope text-to-video and
video-to-video, I2VGen-XL, SVD), checked by what must hold: a video that fits one window is the plain run bit
for bit, a long video runs windowed, a constant schedule equals the plain prompt, and seams of a static input
jump no more than the frames inside a window."""

import numpy as np
import PIL.Image
import pytest
import tiny
import torch

import vidcore
from vidcore.nn.transformer import TemporalTransformer
from vidcore.pipelines.base import VideoPipeline
from vidcore.sampling import FreeNoiseMixin
from vidcore.sampling.free_noise import attention_windows


pytestmark = pytest.mark.usefixtures("one_thread")


def _load(cls, folder):
    pipe = cls.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def t2v_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2v") / "tiny"
    tiny.build_tiny_t2v_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def i2v_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("i2v") / "tiny"
    tiny.build_tiny_i2vgen_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def svd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("svd") / "tiny"
    tiny.build_tiny_svd_pipeline(folder)
    return folder


IMAGE = PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (16, 16, 3), dtype=np.uint8))
VIDEO = np.random.RandomState(1).rand(9, 16, 16, 3).astype(np.float32)


def cases(t2v_folder, i2v_folder, svd_folder):
    """(pipe, call kwargs without the frame count, how to pass the frame count) per family."""
    return {
        "t2v": (_load(vidcore.TextToVideoPipeline, t2v_folder), {"prompt": "a cat", "height": 16, "width": 16}),
        "v2v": (_load(vidcore.VideoToVideoPipeline, t2v_folder), {"prompt": "a cat", "strength": 0.8}),
        "i2vgen": (_load(vidcore.I2VGenXLPipeline, i2v_folder),
                   {"prompt": "a cat", "image": IMAGE, "height": 16, "width": 16, "clip_skip": None,
                    "image_latents_from_generator": True}),
        "svd": (_load(vidcore.StableVideoDiffusionPipeline, svd_folder), {"image": IMAGE, "height": 16, "width": 16}),
    }


def run(pipe, frames, seed=0, **kwargs):
    if isinstance(pipe, vidcore.VideoToVideoPipeline):
        kwargs["video"] = VIDEO[:frames]
    else:
        kwargs["num_frames"] = frames
    return pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=2, output_type="latent",
                **kwargs).frames


@pytest.mark.parametrize("family", ["t2v", "v2v", "i2vgen", "svd"])
def test_one_window_is_plain_and_long_videos_run_windowed(t2v_folder, i2v_folder, svd_folder, family):
    pipe, kwargs = cases(t2v_folder, i2v_folder, svd_folder)[family]
    plain = run(pipe, 4, **kwargs)
    long_plain = run(pipe, 9, **kwargs)
    pipe.enable_free_noise(context_length=4, context_stride=2)
    # the windows reach the UNet's temporal blocks only while the pipeline samples
    assert len(pipe.temporal_blocks()) > 0 and all(b.frame_windows is None for b in pipe.temporal_blocks())
    with pipe.sampling_scope():
        assert all(b.frame_windows is not None for b in pipe.temporal_blocks())
    assert all(b.frame_windows is None for b in pipe.temporal_blocks())
    try:
        assert torch.equal(run(pipe, 4, **kwargs), plain)
        long = run(pipe, 9, **kwargs)
        assert long.shape == long_plain.shape and torch.isfinite(long).all()
        assert not torch.allclose(long, long_plain, atol=1e-4)  # windows (and the shuffled noise) act
        if family != "svd":  # a schedule of one prompt is that prompt (per-frame embeddings of equal rows)
            same = run(pipe, 9, **{**kwargs, "prompt": {0: "a cat", 5: "a cat"}})
            assert (same - long).abs().max() < 1e-4
            travel = run(pipe, 9, **{**kwargs, "prompt": {0: "a cat", 5: "a dog"}, "negative_prompt": {0: "", 3: "a"}})
            assert travel.shape == long.shape and not torch.allclose(travel, long, atol=1e-4)
    finally:
        pipe.disable_free_noise()
    assert all(b.frame_windows is None for b in pipe.temporal_blocks())
    assert torch.equal(run(pipe, 9, **kwargs), long_plain)
    if family == "svd":
        with pytest.raises(TypeError):
            pipe(image=IMAGE, prompt={0: "a"})


def _seam_and_inner_jumps(x, windows, frame_dim):
    """Mean |frame k+1 - frame k| where the set of covering windows changes (seams) and inside one set."""
    x = x.movedim(frame_dim, 0)
    d = (x[1:] - x[:-1]).abs().flatten(1).mean(dim=1)
    member = [frozenset(i for i, (s, e) in enumerate(windows) if s <= k < e) for k in range(x.shape[0])]
    seams = [k for k in range(len(d)) if member[k] != member[k + 1]]
    inner = [k for k in range(len(d)) if member[k] == member[k + 1]]
    return d[seams], d[inner]


def test_seams_of_a_static_input_stay_within_window_steps():
    """A temporal transformer with frame positions on a static input (every frame the same): inside a window
    frames differ only through their positions. Blended windows (pyramid, overlapping) keep every seam's step
    within the steps inside a window."""
    torch.manual_seed(0)
    module = TemporalTransformer(16, 2, 8, 4, max_positions=8).eval()
    frames, length, stride = 20, 8, 2
    x = torch.randn(1, 16, 3, 3).repeat(frames, 1, 1, 1)  # (b f) c h w, static

    class Pipe(FreeNoiseMixin, VideoPipeline):
        pass

    pipe = Pipe(unet=module)
    pipe.enable_free_noise(context_length=length, context_stride=stride)
    with torch.no_grad(), pipe.sampling_scope():  # the windows reach the module while the pipeline samples
        out = module(x, frames)
    seams, inner = _seam_and_inner_jumps(out, attention_windows(frames, length, stride), 0)
    assert len(seams) > 3 and len(inner) > 3
    assert seams.max() <= inner.max(), (seams, inner)


def test_svd_seams_of_a_static_video(svd_folder):
    pipe = _load(vidcore.StableVideoDiffusionPipeline, svd_folder)
    frames = 10
    noise = torch.randn(1, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).repeat(1, frames, 1, 1, 1)
    pipe.enable_free_noise(context_length=4, context_stride=2)
    out = pipe(IMAGE, height=16, width=16, num_frames=frames, num_inference_steps=2, output_type="latent",
               latents=noise, generator=torch.Generator().manual_seed(0)).frames
    seams, inner = _seam_and_inner_jumps(out[0], attention_windows(frames, 4, 2), 0)
    assert seams.max() <= inner.max(), (seams, inner)


def test_windows_keep_the_tokens_dtype():
    """Half-precision tokens: the blend accumulates as diffusers does (weights rounded to the dtype, counts in
    float32) and hands back the tokens' dtype, close to the float32 result."""
    torch.manual_seed(0)
    module = TemporalTransformer(16, 2, 8, 4, max_positions=8).eval()

    class Pipe(FreeNoiseMixin, VideoPipeline):
        pass

    pipe = Pipe(unet=module)
    pipe.enable_free_noise(context_length=4, context_stride=3, weighting_scheme="delayed_reverse_sawtooth")
    x = torch.randn(2 * 11, 16, 2, 3)  # 2 videos of 11 frames
    with torch.no_grad(), pipe.sampling_scope():
        full = module(x, 11)
        half = module.to(torch.bfloat16)(x.bfloat16(), 11)
    assert half.dtype == torch.bfloat16 and (half.float() - full).abs().max() < 0.1


def test_pipelines_without_the_hooks_refuse():
    for cls in (vidcore.TextToVideoZeroPipeline, vidcore.AnimateDiffSparseControlNetPipeline):
        pipe = cls.__new__(cls)
        with pytest.raises(ValueError, match=f"{cls.__name__} has no FreeNoise"):
            pipe.enable_free_noise()
