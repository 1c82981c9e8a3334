"""I2VGenXLPipeline against diffusers' I2VGenXLPipeline: same folder, same seed -> same frames; loading,
low precision, input errors, step callback, and ``vidcore generate i2vgen-xl``.

diffusers draws the VAE posterior sample of the image from torch's global RNG and the noise from
``generator``; the tests pass ``generator=torch.manual_seed(s)`` (the global generator itself, as in
diffusers' example), so both pipelines see one random stream in one order.

diffusers' ``clip_skip`` path reads ``text_encoder.text_model``, which transformers 5 removed, so its
default ``clip_skip=1`` fails there: the diffusers calls pass ``clip_skip=None`` (or embeddings computed
from the definition).
"""

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
import vidcore
from vidcore.cli import main

SMALL = dict(height=16, width=24, num_frames=3, num_inference_steps=3)


def close(a, b, tol=3e-5):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    err = np.abs(a - b).max() / max(np.abs(a).max(), 1e-8)
    assert err < tol, f"relative error {err}"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_i2v(tmp_path_factory):
    folder = tmp_path_factory.mktemp("i2vgen") / "tiny-i2vgen"
    return tiny.TinyPipeline(tiny.build_tiny_i2vgen_pipeline(folder, variant_fp16=True), folder)


@pytest.fixture(scope="module")
def ours(tiny_i2v):
    pipe = vidcore.I2VGenXLPipeline.from_pretrained(tiny_i2v.folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def image():
    # not the output's aspect ratio, so both centre crops (square for CLIP, w x h for the VAE) cut
    return PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 52, 3), dtype=np.uint8))


def run_both(ref, ours, seed=0, **kwargs):
    expected = ref(generator=torch.manual_seed(seed), clip_skip=None, **kwargs).frames
    got = ours(generator=torch.manual_seed(seed), clip_skip=None, **kwargs).frames
    return expected, got


def test_matches_diffusers_with_negative_prompt(tiny_i2v, ours, image):
    expected, got = run_both(tiny_i2v.pipe, ours, prompt="a red circle", image=image, negative_prompt="blurry",
                             output_type="np", **SMALL)
    close(expected, got)


def test_latents_match_diffusers_without_guidance_tensor_image_eta(tiny_i2v, ours, image):
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)  # 3 h w in [0, 1]
    expected, got = run_both(tiny_i2v.pipe, ours, prompt="a dog", image=tensor, guidance_scale=1.0, eta=0.7,
                             target_fps=8, output_type="latent", seed=3, height=24, width=16, num_frames=2,
                             num_inference_steps=2)
    close(expected, got)


def test_clip_skip_default_applies_to_both_prompts(tiny_i2v, ours, image):
    # reference embeddings from the definition: the second-to-last layer, final-normed, for the
    # prompt and the negative prompt alike (diffusers' I2VGen-XL skips on both)
    ref = tiny_i2v.pipe

    def embed(text):
        ids = ref.tokenizer([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return ref.text_encoder.final_layer_norm(ref.text_encoder(ids, output_hidden_states=True).hidden_states[-2])

    kw = dict(image=image, output_type="np", **SMALL)
    expected = ref(prompt_embeds=embed("a dog"), negative_prompt_embeds=embed("ugly"), generator=torch.manual_seed(1),
                   **kw).frames
    got = ours("a dog", negative_prompt="ugly", generator=torch.manual_seed(1), **kw).frames  # clip_skip=1 default
    close(expected, got)


def test_image_latents_from_generator_ignores_the_global_rng(tiny_i2v, ours, image):
    kw = dict(prompt="a cat", image=image, output_type="latent", clip_skip=None, height=16, width=16, num_frames=2,
              num_inference_steps=2)
    expected = tiny_i2v.pipe(generator=torch.manual_seed(4), **kw).frames
    torch.manual_seed(123)  # the global RNG is elsewhere; the private generator fixes everything
    got = ours(generator=torch.Generator().manual_seed(4), image_latents_from_generator=True, **kw).frames
    close(expected, got)


def test_num_videos_per_prompt(tiny_i2v, ours, image):
    kw = dict(image=image, output_type="np", num_videos_per_prompt=2, height=16, width=16, num_frames=2,
              num_inference_steps=2)
    expected, got = run_both(tiny_i2v.pipe, ours, prompt="a cat", **kw)
    close(expected, got)
    # two prompts share the one image (diffusers needs one image per prompt here)
    frames = ours(["a cat", "a dog"], generator=torch.manual_seed(0), clip_skip=None, **kw).frames
    assert frames.shape == (4, 2, 16, 16, 3)


def test_one_image_per_prompt(tiny_i2v, ours, image):
    # same size: for a list of differently sized images diffusers crops all with the first one's
    # scale and offsets; vidcore crops each image on its own
    images = [image, image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)]
    expected, got = run_both(tiny_i2v.pipe, ours, prompt=["a cat", "a dog"], image=images,
                             negative_prompt=["ugly", "blurry"], output_type="np", height=16, width=16, num_frames=2,
                             num_inference_steps=2)
    close(expected, got)


def test_pil_output_and_callback_on_step_end(ours, image):
    seen = []

    def on_step(pipe, i, t, tensors):
        seen.append((i, int(t), tuple(tensors["latents"].shape)))
        return {"latents": tensors["latents"]}

    frames = ours("a cat", image=image, generator=torch.manual_seed(0), callback_on_step_end=on_step, **SMALL).frames
    assert [s[0] for s in seen] == [0, 1, 2]
    assert [s[1] for s in seen] == [int(t) for t in ours.scheduler.timesteps]
    assert seen[0][2] == (1, 4, 3, 8, 12)
    assert len(frames) == 1 and len(frames[0]) == 3 and frames[0][0].size == (24, 16)


def test_fp16_variant_loads_and_runs(tiny_i2v, ours, image):
    kw = dict(prompt="a cat", image=image, output_type="np", guidance_scale=1.0, height=8, width=8, num_frames=2,
              num_inference_steps=1)
    # fp16 variant files read into float32: the weights are fp16-exact, so the output is unchanged
    from_fp16 = vidcore.I2VGenXLPipeline.from_pretrained(tiny_i2v.folder, variant="fp16")
    from_fp16.set_progress_bar_config(disable=True)
    assert from_fp16.image_encoder.dtype == torch.float32
    reference = ours(generator=torch.manual_seed(0), **kw).frames
    close(reference, from_fp16(generator=torch.manual_seed(0), **kw).frames)
    # float16 end to end on the CPU: finite, not black, near the float32 result
    half = vidcore.I2VGenXLPipeline.from_pretrained(tiny_i2v.folder, torch_dtype=torch.float16, variant="fp16")
    half.set_progress_bar_config(disable=True)
    assert half.unet.conv_in.weight.dtype == half.image_encoder.dtype == half.text_encoder.dtype == torch.float16
    frames = half(generator=torch.manual_seed(0), **kw).frames
    assert np.isfinite(frames).all() and frames.max() > 0.1 and frames.std() > 0.01
    assert np.abs(frames - reference).max() < 0.05


def test_bad_inputs(ours, image):
    kw = dict(prompt="a cat", num_frames=2, num_inference_steps=1)
    with pytest.raises(ValueError, match="image is required"):
        ours(height=16, width=16, **kw)
    with pytest.raises(ValueError, match=r"height and width must be positive multiples of 8, got height=20"):
        ours(image=image, height=20, width=16, **kw)
    with pytest.raises(ValueError, match=r"image must be a PIL image, a file path.*got dict"):
        ours(image={"pixels": 1}, height=16, width=16, **kw)
    with pytest.raises(ValueError, match=r"image tensor must have shape \(3, h, w\) or \(b, 3, h, w\), got \(16, 16\)"):
        ours(image=torch.rand(16, 16), height=16, width=16, **kw)
    with pytest.raises(ValueError, match=r"image values must be in \[0, 1\]"):
        ours(image=torch.rand(3, 16, 16) * 2 - 1, height=16, width=16, **kw)
    with pytest.raises(FileNotFoundError, match="no such file"):
        ours(image="/nonexistent/cat.png", height=16, width=16, **kw)
    with pytest.raises(ValueError, match="got 2 images for 1 prompts"):
        ours(image=[image, image], height=16, width=16, **kw)


@pytest.mark.parametrize("spelling", ["vidcore", "diffusers"])
def test_cli_generate_i2vgen_gif(tiny_i2v, image, tmp_path, capsys, spelling):
    source, out = tmp_path / "in.png", tmp_path / "out.gif"
    image.save(source)
    code = main(tiny.cli_spelling(spelling, [
        "generate", "i2vgen-xl", "--model", tiny_i2v.folder, "--image", source, "--prompt", "a cat", "--height", "16",
        "--width", "24", "--frames", "3", "--steps", "2", "--fps", "10", "--device", "cpu", "--no-progress", "-o", out]))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert str(out) in printed.out
    with PIL.Image.open(out) as gif:
        assert gif.n_frames == 3 and gif.size == (24, 16)
        assert gif.info["duration"] == 100  # 10 fps (GIF stores centiseconds)
