"""Checks of the tiny-model harness itself (tests/tiny.py): it must build quickly, save a complete
hub-layout folder, and give a diffusers pipeline whose output is finite and not trivial."""

import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tiny

diffusers = pytest.importorskip("diffusers")

CALL = dict(num_inference_steps=2, num_frames=3, height=32, width=48, output_type="np")


def run(pipe, seed=0, **kwargs):
    return pipe("a panda playing guitar", generator=torch.manual_seed(seed), **{**CALL, **kwargs}).frames


def test_t2v_runs_and_saves_complete_folder(tmp_path):
    start = time.perf_counter()
    pipe = tiny.build_tiny_t2v_pipeline(tmp_path, variant_fp16=True)
    assert time.perf_counter() - start < 5.0  # ~0.5 s on an idle CPU; slack for busy machines

    video = run(pipe)
    assert video.shape == (1, 3, 32, 48, 3)
    assert np.isfinite(video).all()
    assert video.std() > 0.05 and np.abs(np.diff(video, axis=1)).mean() > 1e-3  # frames differ
    assert ((video > 0) & (video < 1)).mean() > 0.5  # mostly not clipped

    assert tiny.missing_files(tmp_path) == []
    assert tiny.missing_files(tmp_path, variant="fp16") == []
    for sub, name in [("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")]:
        state = getattr(pipe, sub).state_dict()
        full = load_file(tmp_path / sub / f"{name}.safetensors")
        half = load_file(tmp_path / sub / f"{name}.fp16.safetensors")
        assert full.keys() == half.keys() == state.keys()
        for key, value in full.items():
            assert half[key].dtype == torch.float16 and value.dtype == torch.float32
            assert torch.equal(value, state[key]) and torch.equal(value, half[key].float()), key

    # diffusers reloads the folder (both variants) to the same pipeline
    reloaded = diffusers.TextToVideoSDPipeline.from_pretrained(tmp_path)
    assert {c.dtype for c in (reloaded.unet, reloaded.vae, reloaded.text_encoder)} == {torch.float32}
    np.testing.assert_array_equal(run(reloaded), video)
    reloaded = diffusers.TextToVideoSDPipeline.from_pretrained(tmp_path, variant="fp16", dtype=torch.float32)
    np.testing.assert_array_equal(run(reloaded), video)


def test_no_zero_parameters_and_seeded(tmp_path):
    a = tiny.build_tiny_t2v_components(seed=0)
    b = tiny.build_tiny_t2v_components(seed=0)
    c = tiny.build_tiny_t2v_components(seed=1)
    for name in ("unet", "vae", "text_encoder"):
        params = dict(a[name].named_parameters())
        zero = [k for k, p in params.items() if (p == 0).all()]
        assert zero == [], f"{name}: parameters left at zero: {zero}"
        # layers diffusers zero-initialises are random too
        if name == "unet":
            assert params["conv_out.weight"].abs().mean() > 0.01
            assert params["down_blocks.0.temp_convs.0.conv4.3.weight"].abs().mean() > 0.01
        other = dict(b[name].named_parameters())
        assert all(torch.equal(p, other[k]) for k, p in params.items())
        assert not torch.equal(params[next(iter(params))], dict(c[name].named_parameters())[next(iter(params))])


def test_tokenizer_handles_any_prompt(tmp_path):
    tok = tiny.make_tiny_tokenizer(tmp_path)
    assert tok.model_max_length == 77
    assert tok.bos_token == "<|startoftext|>" and tok.eos_token == "<|endoftext|>"
    for prompt in ["A cat riding a horse", "Ünïcödé 🐼 x-ray, 4K!!", "word " * 200, ""]:
        ids = tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        assert len(ids) == 77 and ids[0] == tok.bos_token_id and tok.eos_token_id in ids
        assert max(ids) < len(tok)
    from vidcore.tools.clip_vocab import DEFAULT_WORDS

    for word in DEFAULT_WORDS:  # known words are single tokens
        assert len(tok(word).input_ids) == 3, word
    assert len(tok("A panda, riding!").input_ids) == 2 + 5  # a panda , riding !
    assert tiny.make_tiny_tokenizer(tmp_path / "sd2", pad_token="!").pad_token_id != tok.eos_token_id


def test_variants_dpm_and_v2v(tmp_path):
    pipe = tiny.build_tiny_t2v_pipeline(
        tmp_path / "dpm",
        seed=3,
        scheduler="dpm",
        unet_overrides=dict(block_out_channels=(16, 32, 32), norm_num_groups=4, attention_head_dim=4, layers_per_block=1),
        vae_overrides=dict(norm_num_groups=16),
    )
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.unet.config.down_block_types == ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D")
    video = run(pipe)
    assert np.isfinite(video).all() and video.std() > 0.05
    assert tiny.missing_files(tmp_path / "dpm") == []

    v2v = tiny.build_tiny_v2v_pipeline(tmp_path / "v2v")
    assert type(v2v).__name__ == "VideoToVideoSDPipeline"
    source = [np.random.default_rng(0).random((32, 48, 3)).astype(np.float32) for _ in range(3)]
    out = v2v("a panda", video=source, strength=0.6, num_inference_steps=3, output_type="np",
              generator=torch.manual_seed(0)).frames
    assert out.shape == (1, 3, 32, 48, 3) and np.isfinite(out).all() and out.std() > 0.05


def test_fixtures(tiny_t2v, tiny_v2v):
    assert tiny.missing_files(tiny_t2v.folder, variant="fp16") == []
    assert tiny.missing_files(tiny_v2v.folder, variant="fp16") == []
    same = zip(tiny_t2v.pipe.unet.parameters(), tiny_v2v.pipe.unet.parameters())
    assert all(torch.equal(p, q) for p, q in same)


def test_tiny_imports_diffusers_only_inside_functions():
    """So that importing tiny (or conftest) never puts diffusers into sys.modules."""
    import ast

    for path in (tiny.__file__, tiny.__file__.replace("tiny.py", "conftest.py")):
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in tree.body:  # module level statements only
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "diffusers" for a in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "diffusers", path
