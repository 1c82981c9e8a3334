"""Original SDXL single files (LDM layout with SDXL's conditioner; conversion/maps/original_sdxl.py).

A tiny random SDXL model is written in the original layout by vidcore's reverse maps and read back by diffusers'
own conversion functions (every tensor equal); AnimateDiffSDXLPipeline.from_single_file on that file gives the
frames of from_pretrained on the diffusers folder; the real SDXL UNet and OpenCLIP bigG text tower convert on the
meta device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import tiny_sdxl
import vidcore
from vidcore.conversion.engine import ChainedMap
from vidcore.conversion.maps import original_sd, original_sdxl
from vidcore.conversion.maps.diffusers_unet2d import unet2d_map
from vidcore.loading import original_state_dict


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_sdxl.build_tiny_animatediff_sdxl(tmp_path_factory.mktemp("sdxl-single-file"))


def sdxl_file(pipe) -> dict:
    """A vidcore AnimateDiffSDXLPipeline's base model in the original SDXL single-file layout (+ the extras a
    real file carries)."""
    unet = pipe.unet.unet
    cfg = unet.config.to_diffusers_config()
    state, _ = ChainedMap([original_sdxl.sdxl_unet_map(cfg), unet2d_map(cfg)]).convert(
        unet.state_dict(), None, direction="reverse")
    out = {original_sdxl.UNET_PREFIX + k: v.contiguous() for k, v in state.items()}
    out.update(original_state_dict(pipe.vae))
    for k, v in original_state_dict(pipe.text_encoder).items():
        out[original_sdxl.TEXT_ENCODER_PREFIX + k[len(original_sd.TEXT_ENCODER_PREFIX):]] = v
    state, _ = original_sdxl.open_clip_text_map().convert(pipe.text_encoder_2.state_dict(), None, direction="reverse")
    out.update({original_sdxl.TEXT_ENCODER_2_PREFIX + k: v.contiguous() for k, v in state.items()})
    out[original_sdxl.TEXT_ENCODER_2_PREFIX + "logit_scale"] = torch.tensor(4.6)
    out["betas"] = torch.linspace(0, 1, 10)  # skipped quietly
    out["denoiser.sigmas"] = torch.ones(3)  # unknown: ignored with a warning
    return out


def test_export_is_read_back_by_diffusers_and_from_single_file_equals_from_pretrained(setup, tmp_path):
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_open_clip_checkpoint)

    ours = vidcore.AnimateDiffSDXLPipeline.from_pretrained(setup.sdxl, motion_adapter=setup.adapter)
    original = sdxl_file(ours)
    assert original_sdxl.detect(original)
    ref = setup.pipe
    unet_ref = {k: v for k, v in ref.unet.state_dict().items() if "motion_modules" not in k}
    unet = convert_ldm_unet_checkpoint(dict(original), dict(ref.unet.config))
    assert sorted(unet) == sorted(unet_ref) and all(torch.equal(unet[k], v) for k, v in unet_ref.items())
    clip = convert_ldm_clip_checkpoint(dict(original))
    for k, v in ref.text_encoder.state_dict().items():
        assert torch.equal(clip[k if k in clip else "text_model." + k], v), k
    big = convert_open_clip_checkpoint(ref.text_encoder_2, dict(original), prefix=original_sdxl.TEXT_ENCODER_2_PREFIX)
    expected = {k: v for k, v in ref.text_encoder_2.state_dict().items() if not k.endswith("position_ids")}
    assert sorted(big) == sorted(expected) and all(torch.equal(big[k], v) for k, v in expected.items())

    save_file(original, tmp_path / "sdxl_finetune.safetensors")
    with pytest.warns(UserWarning, match="ignoring 1 keys"):  # denoiser.sigmas
        pipe = vidcore.AnimateDiffSDXLPipeline.from_single_file(tmp_path / "sdxl_finetune.safetensors",
                                                                motion_adapter=setup.adapter, config_from=setup.sdxl)
    kwargs = dict(prompt="a cat", negative_prompt="dog", num_frames=3, height=16, width=24, num_inference_steps=2,
                  output_type="np")
    for p in (pipe, ours):
        p.set_progress_bar_config(disable=True)
    a = pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames
    b = ours(generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert np.array_equal(a, b)


def test_real_sdxl_unet_and_bigg_text_tower_on_meta():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from test_unet2d_sdxl import SDXL_UNET_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SDXL_UNET_CONFIG)
        big = CLIPTextModelWithProjection(CLIPTextConfig(  # stabilityai/stable-diffusion-xl-base-1.0 text_encoder_2
            vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            projection_dim=1280, hidden_act="gelu", max_position_embeddings=77))
    for keymap, model in ((original_sdxl.sdxl_unet_map(dict(unet.config)), unet),
                          (original_sdxl.open_clip_text_map(), big)):
        target = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        meta = {k: torch.empty(s, device="meta") for k, s in target.items()}
        back, _ = keymap.convert(meta, None, direction="reverse")
        again, _ = keymap.convert(back, target)
        assert set(again) == set(target)
    assert "label_emb.0.0.weight" in original_sdxl.sdxl_unet_map(dict(unet.config)).convert(
        {k: torch.empty(v.shape, device="meta") for k, v in unet.state_dict().items()}, None, direction="reverse")[0]


def test_not_an_sdxl_file(tmp_path):
    from vidcore.errors import CheckpointError

    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, tmp_path / "sd15.safetensors")
    with pytest.raises(CheckpointError, match="not an original Stable Diffusion XL file"):
        vidcore.pipelines.animatediff_sdxl.load_sdxl_single_file(tmp_path / "sd15.safetensors", config_from=tmp_path)


def test_cli_runs_an_sdxl_single_file(setup, tmp_path, monkeypatch, capsys):
    import vidcore.cli
    from vidcore.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ours = vidcore.AnimateDiffSDXLPipeline.from_pretrained(setup.sdxl, motion_adapter=setup.adapter)
    save_file(sdxl_file(ours), tmp_path / "xl.safetensors")
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append(frames) or str(path))
    code = main([str(a) for a in ("generate", "animatediff", "--model", tmp_path / "xl.safetensors", "--config-from",
                                  setup.sdxl, "--motion-adapter", setup.adapter, "--prompt", "waves", "--frames", "2",
                                  "--height", "16", "--width", "16", "--steps", "1", "--seed", "2", "--device", "cpu",
                                  "--no-progress", "-o", tmp_path / "x.gif")])
    assert code == 0, capsys.readouterr().err
    ours.set_progress_bar_config(disable=True)
    expected = ours(prompt="waves", num_frames=2, height=16, width=16, num_inference_steps=1, guidance_scale=5.0,
                    generator=torch.Generator("cpu").manual_seed(2), output_type="np").frames[0]
    assert np.abs(np.asarray(written[0]) - expected).max() < 1e-5


def test_sd15_loaders_point_to_the_sdxl_loader(setup, tmp_path):
    from vidcore.errors import CheckpointError

    ours = vidcore.AnimateDiffSDXLPipeline.from_pretrained(setup.sdxl, motion_adapter=setup.adapter)
    save_file(sdxl_file(ours), tmp_path / "xl.safetensors")
    for load in (lambda p: vidcore.load_model(p), lambda p: vidcore.load_sd_single_file(p)):
        with pytest.raises(CheckpointError, match="Stable Diffusion XL single file.*AnimateDiffSDXLPipeline.from_single_file"):
            load(tmp_path / "xl.safetensors")
