"""The shipped demo model (vidcore/demo/model): it loads through the ordinary loaders, generates, follows
its prompts, tolerates unknown words, and the CLI uses it when no --model is given."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vidcore
from vidcore.cli import main
from vidcore.demo import DEFAULTS, MODEL_DIR, demo_model_path
from vidcore.demo.evaluate import score_color, score_direction
from vidcore.demo.train import VOCAB


@pytest.fixture(scope="module")
def pipe():
    p = vidcore.TextToVideoPipeline.from_pretrained(demo_model_path())
    p.set_progress_bar_config(disable=True)
    return p


def test_shipped_files_are_a_diffusers_folder_under_20_mb():
    assert demo_model_path() == MODEL_DIR
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size < 20e6
    index = json.loads((MODEL_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline"
    for sub in ("unet", "vae"):
        assert (MODEL_DIR / sub / "diffusion_pytorch_model.safetensors").is_file()
    unet = vidcore.load_model(MODEL_DIR, subfolder="unet")
    vae = vidcore.load_model(MODEL_DIR, subfolder="vae")
    assert isinstance(unet, vidcore.UNet3D) and unet.dtype == torch.float32
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    assert unet.config.sample_size * factor == DEFAULTS["height"] == DEFAULTS["width"]
    from safetensors import safe_open

    with safe_open(str(MODEL_DIR / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_tokenizer_knows_the_vocabulary(pipe):
    tok = pipe.tokenizer
    assert tok.model_max_length == 77
    for word in VOCAB:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    assert pipe.text_encoder.dtype == torch.float32


def test_generates_finite_frames(pipe):
    out = pipe("a red circle moving right", num_frames=4, num_inference_steps=4, guidance_scale=DEFAULTS["guidance_scale"],
               generator=torch.Generator().manual_seed(0), output_type="np").frames
    assert out.shape == (1, 4, DEFAULTS["height"], DEFAULTS["width"], 3)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_follows_color_and_direction(pipe):
    prompts = ["a red circle moving right", "a blue square moving up", "a green triangle moving left",
               "a yellow circle moving down"]
    kwargs = {k: v for k, v in DEFAULTS.items() if k != "fps"}
    out = pipe(prompts, **kwargs, generator=[torch.Generator().manual_seed(0) for _ in prompts],
               output_type="np").frames
    got = [(score_color(v), score_direction(v)) for v in out]
    want = [(p.split()[1], p.split()[-1]) for p in prompts]
    assert sum(g == w for g, w in zip(got, want)) >= 3, got  # the evaluation measures the accuracy over all prompts


def test_unknown_words_still_run(pipe):
    """Words outside the vocabulary are spelled out letter by letter: the call works (the docs say the result
    is then unreliable)."""
    out = pipe("a purple hexagon zigzagging diagonally!", num_frames=2, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np").frames
    assert out.shape == (1, 2, DEFAULTS["height"], DEFAULTS["width"], 3) and np.isfinite(out).all()


def test_cli_without_model_uses_the_demo(capsys, tmp_path):
    out = tmp_path / "demo.mp4"
    assert main(["generate", "text-to-video", "--prompt", "a red circle moving right", "--steps", "4",
                 "--no-progress", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "built-in demo model" in printed and "--model" in printed
    import av

    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == DEFAULTS["num_frames"] and frames[0].shape == (DEFAULTS["height"], DEFAULTS["width"], 3)


def test_bf16_runs_finite_and_follows_the_prompt():
    """What a GPU user gets by default is low precision (fp16 there); bf16 is the fast low-precision path on CPU."""
    pipe = vidcore.TextToVideoPipeline.from_pretrained(demo_model_path(), torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {k: v for k, v in DEFAULTS.items() if k != "fps"}
    out = pipe("a green square moving down", **kwargs, generator=torch.Generator().manual_seed(2), output_type="np").frames
    assert np.isfinite(out).all()
    assert (score_color(out[0]), score_direction(out[0])) == ("green", "down")
