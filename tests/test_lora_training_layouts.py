"""LoRAs trained with vidcore.training (add_lora) and written by save_lora load in diffusers and back in vidcore with
the outputs of the trained branches, for every UNet family:

* peft layout (``unet.{layer}.lora_A.weight``): diffusers' ``load_lora_weights`` on AnimateDiffPipeline (frames) and
  AnimateDiffSDXLPipeline (UNet output); peft's ``inject_adapter_in_model`` + ``set_peft_model_state_dict`` on the
  UNets of TextToVideoSDPipeline (frames; its ``load_lora_weights`` fails in diffusers 0.42), SVD and I2VGen-XL
  (UNet output; their diffusers pipelines have no LoRA loader);
* vidcore's ``load_lora_weights`` on the AnimateDiff, ModelScope, SVD and I2VGen-XL pipelines (fused weights) equals
  the unfused branches;
* the original AnimateDiff motion-LoRA layout loads back in vidcore (diffusers ignores that layout: checked);
* LoRAs that do not fit (layers the model lacks, another rank, layers a layout cannot hold) are clear errors.

Every branch gets random non-zero down *and* up weights (a fresh LoRA's zero ``up`` would hide a wrong name or
scale), and ``alpha != rank`` so a forgotten alpha / rank factor shows.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny
import tiny_animatediff as ta
import vidcore
from vidcore.errors import ArgumentError, CheckpointError
from vidcore.models.motion import UNetMotion
from vidcore.training.lora import (TARGETS, LoRAConfig, add_lora, lora_layers, lora_state_dict, remove_lora,
                                   save_lora, set_lora_state_dict)

pytest.importorskip("peft", reason="diffusers' LoRA loading (the reference) needs peft")
pytestmark = pytest.mark.usefixtures("one_thread")

RANK, ALPHA = 2, 3.0  # branch scale 1.5, folded into lora_B by save_lora
FRAME_TOL = 5e-5  # pipeline frames in [0, 1], float32 (measured: about 5e-6)
UNET_TOL = 1e-5  # max |error| / max |output| of a UNet forward (measured: 1e-6 or less)


def rel_err(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return ((a - b).abs().max() / a.abs().max()).item()


def train_(model, target, seed: int = 0) -> list[str]:
    """add_lora with non-zero random down and up weights: what a LoRA looks like after some training."""
    names = add_lora(model, LoRAConfig(rank=RANK, alpha=ALPHA, target=target))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, linear in lora_layers(model):
            down, up = linear.lora.down.weight, linear.lora.up.weight
            down.copy_(torch.randn(down.shape, generator=g) / down.shape[1] ** 0.5)
            up.copy_(torch.randn(up.shape, generator=g) * 0.3)
    return names


def diffusers_matches(ref_unet, patterns) -> list[str]:
    """The layers of a diffusers UNet that ``patterns`` select (linears, and 1x1 convs that vidcore holds as linears):
    what add_lora must have found, none missed by the reverse key map."""
    return sorted(n for n, m in ref_unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
                  and any(re.search(p, n) for p in patterns))


def peft_inject_(ref, path):
    """What a user does for a diffusers UNet whose pipeline has no LoRA loader: inject peft layers named by the file
    and load its state (alpha = rank: the file's B holds the scale)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    state = {k.removeprefix("unet."): v for k, v in load_file(str(path)).items()}
    layers = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=layers), ref)
    result = set_peft_model_state_dict(ref, state)
    assert not getattr(result, "unexpected_keys", []), result
    return layers


# ----------------------------------------------------------------------------- AnimateDiff (SD1.5), frames

KW = dict(prompt="a boat", negative_prompt="blurry", num_frames=3, height=8, width=16, num_inference_steps=2,
          output_type="np")


def frames(pipe):
    return np.asarray(pipe(generator=torch.Generator().manual_seed(0), **KW).frames)


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    from vidcore.pipelines.animatediff import animatediff_scheduler

    setup = ta.build_tiny_animatediff(tmp_path_factory.mktemp("ad"))
    scheduler = animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json")
    pipe = vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return setup.pipe, pipe, frames(pipe)


def test_animatediff_peft_file_loads_in_diffusers_and_vidcore(animatediff, tmp_path):
    ref, pipe, original = animatediff
    # motion and spatial attention, plus a 1x1-conv projection (SD1.5's proj_in: a conv in diffusers, linear here)
    target = TARGETS["both"] + (r"^down_blocks\.0\.attentions\.0\.proj_in$",)
    names = train_(pipe.unet, target)
    assert names == diffusers_matches(ref.unet, target)
    assert any(".motion_modules." in n for n in names) and any(".attentions." in n for n in names)
    branches = frames(pipe)
    path = save_lora(pipe.unet, tmp_path / "lora.safetensors")
    assert load_file(str(path))["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"].shape[2:] == (1, 1)
    assert np.abs(branches - original).max() > 1e-2  # the LoRA changes the video

    ref.load_lora_weights(str(path), adapter_name="trained")
    try:
        assert np.abs(frames(ref) - branches).max() < FRAME_TOL
    finally:
        ref.unload_lora_weights()

    remove_lora(pipe.unet)
    pipe.load_lora_weights(path, adapter_name="trained")
    try:
        assert np.abs(frames(pipe) - branches).max() < FRAME_TOL
    finally:
        pipe.unload_lora_weights()
    assert np.array_equal(frames(pipe), original)


def test_animatediff_original_layout_loads_back_in_vidcore(animatediff, tmp_path):
    ref, pipe, original = animatediff
    train_(pipe.unet, "temporal", seed=1)
    branches = frames(pipe)
    path = save_lora(pipe.unet, tmp_path / "v2_lora_Trained.safetensors", layout="animatediff")
    state = load_file(str(path))
    assert "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor" \
           ".to_out_lora.up.weight" in state
    assert state.keys() == {k for k in state if ".temporal_transformer." in k and k.endswith(("down.weight",
                                                                                              "up.weight"))}
    remove_lora(pipe.unet)
    pipe.load_lora_weights(path)
    try:
        assert np.abs(frames(pipe) - branches).max() < FRAME_TOL
    finally:
        pipe.unload_lora_weights()

    # diffusers does not read the original layout (its loader finds no key it knows and adds nothing): a user
    # converts it with diffusers' scripts/convert_animatediff_motion_lora_to_diffusers.py, or saves layout="peft"
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    ref.load_lora_weights(str(path), adapter_name="original")
    try:
        assert not any(hasattr(m, "lora_A") for m in ref.unet.modules())
    finally:
        ref.unload_lora_weights()


def test_layouts_that_cannot_hold_the_layers_are_refused(animatediff, tmp_path):
    _, pipe, _ = animatediff
    train_(pipe.unet, "spatial")
    try:
        with pytest.raises(ArgumentError, match="layout='peft'"):
            save_lora(pipe.unet, tmp_path / "x.safetensors", layout="animatediff")
        with pytest.raises(ArgumentError, match="layout must be one of"):
            save_lora(pipe.unet, tmp_path / "x.safetensors", layout="kohya")
        assert not (tmp_path / "x.safetensors").exists()
    finally:
        remove_lora(pipe.unet)


# ----------------------------------------------------------------------------- ModelScope (UNet3D), frames

T2V_KW = dict(prompt="a cat", num_frames=3, height=16, width=16, num_inference_steps=2, output_type="np")


def t2v_frames(pipe):
    return np.asarray(pipe(generator=torch.Generator().manual_seed(0), **T2V_KW).frames)


def test_text_to_video_peft_file_loads_in_diffusers_and_vidcore(tmp_path):
    ref = tiny.build_tiny_t2v_pipeline(tmp_path / "t2v")
    pipe = vidcore.TextToVideoPipeline.from_pretrained(tmp_path / "t2v")
    pipe.set_progress_bar_config(disable=True)
    original = t2v_frames(pipe)
    names = train_(pipe.unet, "both")  # temp_attentions, transformer_in and the spatial attentions
    assert names == diffusers_matches(ref.unet, TARGETS["both"])
    assert any(n.startswith("transformer_in.") for n in names) and any(".temp_attentions." in n for n in names)
    branches = t2v_frames(pipe)
    assert np.abs(branches - original).max() > 1e-2
    path = save_lora(pipe.unet, tmp_path / "lora" / "pytorch_lora_weights.safetensors")

    # diffusers 0.42's TextToVideoSDPipeline.load_lora_weights fails (its UNet3DConditionModel lacks
    # load_lora_adapter, a frozen pipeline): peft on its UNet, as for SVD / I2VGen-XL
    peft_inject_(ref.unet, path)
    assert np.abs(t2v_frames(ref) - branches).max() < FRAME_TOL

    remove_lora(pipe.unet)
    pipe.load_lora_weights(path.parent)
    assert np.abs(t2v_frames(pipe) - branches).max() < FRAME_TOL
    # the call's LoRA scale works on this pipeline now that it loads LoRAs: 0 is the video without the LoRA
    unscaled = pipe(generator=torch.Generator().manual_seed(0), cross_attention_kwargs={"scale": 0.0}, **T2V_KW)
    assert np.array_equal(np.asarray(unscaled.frames), original)
    pipe.unload_lora_weights()
    assert np.array_equal(t2v_frames(pipe), original)


# ----------------------------------------------------------------------------- UNets: SDXL motion, SVD, I2VGen-XL


def sdxl_case(tmp_path):
    from diffusers import AnimateDiffSDXLPipeline, DDIMScheduler
    from diffusers import MotionAdapter as RefAdapter
    from diffusers import UNet2DConditionModel

    config = tiny.tiny_sdxl_unet_config()
    unet = tiny.randomize_(UNet2DConditionModel(**config), 0).eval()
    adapter = tiny.randomize_(RefAdapter(**tiny.tiny_sdxl_motion_adapter_config()), 1).eval()
    unet.save_pretrained(tmp_path / "unet")
    adapter.save_pretrained(tmp_path / "adapter")
    # only the pipeline's LoRA loader is used: no text encoders, VAE or tokenizers needed
    ref = AnimateDiffSDXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
                                  unet=unet, motion_adapter=adapter, scheduler=DDIMScheduler())
    ref.unet.add_embedding.load_state_dict(unet.add_embedding.state_dict())  # diffusers' from_unet2d leaves it random
    ours = UNetMotion(vidcore.load_model(tmp_path / "unet"), vidcore.load_model(tmp_path / "adapter"))
    g = torch.Generator().manual_seed(5)
    f = 3
    x = torch.randn(2, 4, f, 8, 12, generator=g)
    ctx = torch.randn(2, 7, config["cross_attention_dim"], generator=g)
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    added = {"text_embeds": torch.randn(2, pooled, generator=g),
             "time_ids": torch.tensor([[64.0, 96, 0, 0, 64, 96], [72, 40, 8, 16, 64, 32]])}
    t = torch.tensor([7, 640])
    return (ref, ours, lambda m: m(x, t, ctx.repeat_interleave(f, dim=0), added_cond_kwargs=added).sample,
            lambda m: m(x, t, ctx, added_cond_kwargs=added))


def svd_case(tmp_path):
    from diffusers import UNetSpatioTemporalConditionModel

    ref = tiny.randomize_(UNetSpatioTemporalConditionModel(**tiny.tiny_svd_unet_config()), 0).eval()
    ref.save_pretrained(tmp_path / "unet")
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 3, 8, 8, 6, generator=g), torch.randn(2, 1, 32, generator=g)
    ids, t = torch.tensor([[6.0, 127.0, 0.02], [5.0, 40.0, 0.3]]), torch.tensor([0.575, -0.7])
    return ref, vidcore.load_model(tmp_path / "unet"), lambda m: m(x, t, ctx, ids).sample, lambda m: m(x, t, ctx, ids)


def i2vgen_case(tmp_path):
    from diffusers import I2VGenXLUNet

    ref = tiny.randomize_(I2VGenXLUNet(**tiny.tiny_i2vgen_unet_config()), 0).eval()
    ref.save_pretrained(tmp_path / "unet")
    g = torch.Generator().manual_seed(0)
    d = ref.config.cross_attention_dim
    x, image_latents = torch.randn(2, 4, 3, 8, 12, generator=g), torch.randn(2, 4, 3, 8, 12, generator=g)
    image_embeds, text = torch.randn(2, d, generator=g), torch.randn(2, 7, d, generator=g)
    t, fps = torch.tensor([5, 700]), torch.tensor([16, 8])
    return (ref, vidcore.load_model(tmp_path / "unet"),
            lambda m: m(x, t, fps=fps, image_latents=image_latents, image_embeddings=image_embeds,
                        encoder_hidden_states=text).sample,
            lambda m: m(x, t, fps, image_latents, image_embeds, text))


def vidcore_pipeline(kind, unet):
    """A vidcore pipeline around ``unet`` for its LoRA methods (the other components are not used)."""
    if kind == "svd":
        return vidcore.StableVideoDiffusionPipeline(vae=None, image_encoder=None, unet=unet, scheduler=None,
                                                    feature_extractor=None)
    return vidcore.I2VGenXLPipeline(**{**dict.fromkeys(vidcore.I2VGenXLPipeline.component_names), "unet": unet})


CASES = {"animatediff-sdxl": sdxl_case, "svd": svd_case, "i2vgen-xl": i2vgen_case}


@pytest.mark.parametrize("kind", CASES)
def test_unet_peft_file_loads_in_diffusers_and_vidcore(kind, tmp_path):
    ref, ours, run_ref, run_ours = CASES[kind](tmp_path)
    with torch.no_grad():
        original = run_ours(ours)
        names = train_(ours, "both")
        assert names == diffusers_matches(ref.unet if kind == "animatediff-sdxl" else ref, TARGETS["both"])
        assert any(".attn2." in n for n in names)
        branches = run_ours(ours)
        assert rel_err(branches, original) > 1e-2
        path = save_lora(ours, tmp_path / "lora.safetensors")

        if kind == "animatediff-sdxl":
            ref.load_lora_weights(str(path))
            ref = ref.unet
        else:  # diffusers' SVD and I2VGen-XL pipelines have no LoRA loader: peft directly
            assert sorted(peft_inject_(ref, path)) == sorted(names)
        assert rel_err(run_ref(ref), branches) < UNET_TOL

        remove_lora(ours)
        if kind == "animatediff-sdxl":
            vidcore.fuse_lora(ours, path)
        else:
            vidcore_pipeline(kind, ours).load_lora_weights(path)
        assert rel_err(run_ours(ours), branches) < UNET_TOL


# ----------------------------------------------------------------------------- what does not fit


def test_files_that_do_not_fit_are_clear_errors(tmp_path):
    ref, svd, _, _ = svd_case(tmp_path / "svd")
    _, i2vgen, _, run_i2vgen = i2vgen_case(tmp_path / "i2vgen")
    train_(svd, "temporal")
    svd_file = save_lora(svd, tmp_path / "svd.safetensors")

    before = {k: v.clone() for k, v in i2vgen.state_dict().items()}
    pipe = vidcore_pipeline("i2vgen", i2vgen)
    with pytest.raises(CheckpointError, match=r"not in this I2VGenXLUNet.*temporal_transformer_blocks"):
        pipe.load_lora_weights(svd_file)  # SVD's temporal layers on an I2VGen-XL UNet
    assert all(torch.equal(v, before[k]) for k, v in i2vgen.state_dict().items())  # nothing changed
    assert pipe.get_list_adapters() == {}

    with pytest.raises(TypeError, match="vidcore's UNets"):
        save_lora(vidcore.load_model(tiny_vae(tmp_path)), tmp_path / "vae.safetensors")

    # another rank: the trained state of rank 2 does not go into rank-4 branches, nor halves of two ranks together
    state = lora_state_dict(svd)
    remove_lora(svd)
    add_lora(svd, LoRAConfig(rank=4, target="temporal"))
    with pytest.raises(ArgumentError, match="another rank"):
        set_lora_state_dict(svd, state)
    a_key = next(k for k in state if k.endswith("lora_A.weight"))
    state[a_key] = torch.randn(3, state[a_key].shape[1])
    save_file(state, str(tmp_path / "mixed.safetensors"))
    remove_lora(svd)
    with pytest.raises(CheckpointError, match="disagree on the rank"):
        vidcore.fuse_lora(svd, tmp_path / "mixed.safetensors")

    with pytest.raises(ArgumentError, match="AnimateDiff motion modules only"):
        train_(i2vgen, "temporal")
        save_lora(i2vgen, tmp_path / "i2vgen.safetensors", layout="animatediff")


def tiny_vae(tmp_path):
    from diffusers import AutoencoderKL

    AutoencoderKL(**tiny.tiny_vae_config()).save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"
