"""The pipeline methods diffusers users reach for (vidcore.pipelines.methods): ``components``, ``from_pipe``,
``save_pretrained`` round-tripping through diffusers' own ``from_pretrained``, VAE slicing / tiling, FreeU and fused
QKV against diffusers' same setting, the LoRA ``scale`` of ``cross_attention_kwargs`` and
``load_textual_inversion`` against diffusers'."""

from __future__ import annotations

import json
import re

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
import tiny_animatediff as ta
import tiny_zero
import vidcore
from vidcore.pipelines.features import PIPELINES, pipeline_class

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4  # max abs difference of np frames in [0, 1]


def frames_of(pipe, seed=0, global_rng=False, **kwargs):
    """The frames of one call as np; ``global_rng``: the generator is torch's global one, seeded (diffusers'
    I2VGen-XL draws its image latents' noise from it)."""
    kwargs.setdefault("output_type", "np")
    out = pipe(generator=torch.manual_seed(seed) if global_rng else torch.Generator().manual_seed(seed), **kwargs)
    return np.asarray(out.frames)


def close(expected, got, tol=TOL):
    expected, got = np.asarray(expected), np.asarray(got)
    assert expected.shape == got.shape, (expected.shape, got.shape)
    err = np.abs(expected - got).max()
    assert err < tol, f"max abs error {err}"


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- fixtures: tiny pipelines built with diffusers, loaded with vidcore ---------------------------------------

@pytest.fixture(scope="module")
def t2v_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2v") / "pipe"
    tiny.build_tiny_t2v_pipeline(folder)
    return folder


@pytest.fixture(scope="module")
def t2v(t2v_folder):
    return quiet(vidcore.TextToVideoPipeline.from_pretrained(t2v_folder))


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    setup = ta.build_tiny_animatediff(tmp_path_factory.mktemp("animatediff"))
    from vidcore.pipelines.animatediff import animatediff_scheduler

    scheduler = animatediff_scheduler(setup.sd / "scheduler" / "scheduler_config.json")
    pipe = vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter, scheduler=scheduler)
    return setup, quiet(pipe)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    tiny_zero.build_tiny_sd(folder)
    return folder


@pytest.fixture(scope="module")
def zero(sd):
    return quiet(vidcore.TextToVideoZeroPipeline.from_pretrained(
        sd, scheduler=vidcore.schedulers.DDIMScheduler.from_config(sd)))


def video(n=3, h=16, w=24, seed=0):
    rng = np.random.RandomState(seed)
    return [PIL.Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def image(seed=0):
    return PIL.Image.fromarray(np.random.RandomState(seed).randint(0, 256, (40, 52, 3), dtype=np.uint8))


# -- components / from_pipe ---------------------------------------------------------------------------------

def test_components_is_the_name_module_dict_and_old_spellings_work(t2v):
    comps = t2v.components
    assert list(comps) == list(vidcore.TextToVideoPipeline.component_names)
    assert all(comps[name] is getattr(t2v, name) for name in comps)
    # on the class, the names (what loading reads), as before
    assert vidcore.TextToVideoPipeline.components == vidcore.TextToVideoPipeline.component_names
    rebuilt = vidcore.TextToVideoPipeline(**t2v.components)
    assert all(getattr(rebuilt, n) is m for n, m in comps.items())

    class Old(vidcore.TextToVideoPipeline):  # a subclass declaring its names the old way
        components = (*vidcore.TextToVideoPipeline.component_names, "refiner")

    assert Old.component_names[-1] == "refiner" and Old.components == Old.component_names
    assert Old(**t2v.components, refiner=torch.nn.Identity()).components["refiner"].__class__ is torch.nn.Identity
    with pytest.raises(TypeError, match=r"needs components \['refiner'\]"):
        Old(**t2v.components)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_pipeline_has_the_methods(name):
    cls = pipeline_class(name)
    for method in ("from_pipe", "save_pretrained", "enable_vae_slicing", "disable_vae_slicing", "enable_vae_tiling",
                   "disable_vae_tiling", "enable_freeu", "disable_freeu", "fuse_qkv_projections",
                   "unfuse_qkv_projections"):
        assert callable(getattr(cls, method)), method
    assert isinstance(cls.components, tuple) and cls.components == cls.component_names


def test_from_pipe_shares_modules(animatediff, zero):
    _, ad = animatediff
    v2v = vidcore.AnimateDiffVideoToVideoPipeline.from_pipe(ad)
    assert v2v.unet is ad.unet and v2v.vae is ad.vae and v2v.text_encoder is ad.text_encoder
    assert v2v.motion_adapter is ad.motion_adapter
    # an SD pipeline + a motion adapter -> AnimateDiff, the SD UNet shared (not copied)
    made = vidcore.AnimateDiffPipeline.from_pipe(zero, motion_adapter=ad.motion_adapter)
    assert made.unet.unet is zero.unet and made.motion_adapter is ad.motion_adapter and made.vae is zero.vae
    new_scheduler = vidcore.DDIMScheduler.from_config(zero.scheduler.config)
    assert vidcore.TextToVideoZeroPipeline.from_pipe(zero, scheduler=new_scheduler).scheduler is new_scheduler
    with pytest.raises(TypeError, match=r"ControlledVideoPipeline.from_pipe: TextToVideoZeroPipeline has no "
                                        r"\['controlnet'\]; pass them as keyword arguments \(controlnet=...\)"):
        vidcore.ControlledVideoPipeline.from_pipe(zero)


# -- save_pretrained round trips through diffusers ----------------------------------------------------------

def diffusers_load(folder, expected_class, **kwargs):
    import diffusers

    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == expected_class
    pipe = getattr(diffusers, expected_class).from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe, index


def test_save_pretrained_text_to_video_round_trips(t2v, tmp_path):
    t2v.save_pretrained(tmp_path / "out")
    ref, index = diffusers_load(tmp_path / "out", "TextToVideoSDPipeline")
    assert index["unet"] == ["diffusers", "UNet3DConditionModel"] and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    kwargs = dict(prompt="a cat", negative_prompt="blurry", num_frames=3, height=16, width=24, num_inference_steps=2)
    close(frames_of(ref, **kwargs), frames_of(t2v, **kwargs))
    # vidcore reads its own folder back, and the DiffusionPipeline entry point picks the class
    again = quiet(vidcore.DiffusionPipeline.from_pretrained(tmp_path / "out"))
    assert type(again) is vidcore.TextToVideoPipeline
    close(frames_of(t2v, **kwargs), frames_of(again, **kwargs), tol=1e-6)
    # video-to-video from the same modules
    v2v = vidcore.VideoToVideoPipeline.from_pipe(t2v)
    v2v.save_pretrained(tmp_path / "v2v")
    ref, _ = diffusers_load(tmp_path / "v2v", "VideoToVideoSDPipeline")
    kwargs = dict(prompt="a cat", video=video(), strength=0.7, num_inference_steps=2)
    close(frames_of(ref, **kwargs), frames_of(v2v, **kwargs))


def test_save_pretrained_variant_and_errors(t2v, tmp_path):
    out = tmp_path / "out"
    t2v.save_pretrained(out)
    t2v.save_pretrained(out, variant="fp16")  # beside the float32 files, as diffusers
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (out / "text_encoder" / "model.fp16.safetensors").is_file()
    loaded = vidcore.TextToVideoPipeline.from_pretrained(out, variant="fp16")
    assert torch.equal(loaded.unet.conv_in.weight, t2v.unet.conv_in.weight)
    with pytest.raises(ValueError, match="safe_serialization=False is not supported"):
        t2v.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert not (tmp_path / "pickled").exists()


def test_save_pretrained_leaves_nothing_on_error(t2v, tmp_path, monkeypatch):
    from vidcore.loading import save_pipeline as sp

    def broken(module, folder, variant):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sp, "_write_component", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        t2v.save_pretrained(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_save_pretrained_animatediff_splits_unet_and_motion_adapter(animatediff, tmp_path):
    _, ours = animatediff
    ours.save_pretrained(tmp_path / "out")
    ref, index = diffusers_load(tmp_path / "out", "AnimateDiffPipeline")
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["motion_adapter"] == ["diffusers", "MotionAdapter"]
    assert index["image_encoder"] == [None, None]
    kwargs = dict(prompt="a cat walking", negative_prompt="blurry", num_frames=4, height=16, width=24,
                  num_inference_steps=2)
    close(frames_of(ref, **kwargs), frames_of(ours, **kwargs))
    # and vidcore reads the folder back (a plain UNet + the folder's motion_adapter/)
    again = quiet(vidcore.AnimateDiffPipeline.from_pretrained(tmp_path / "out"))
    close(frames_of(ours, **kwargs), frames_of(again, **kwargs), tol=1e-6)
    v2v = vidcore.AnimateDiffVideoToVideoPipeline.from_pipe(ours)
    v2v.save_pretrained(tmp_path / "v2v")
    ref, _ = diffusers_load(tmp_path / "v2v", "AnimateDiffVideoToVideoPipeline")
    kwargs = dict(prompt="a cat", video=video(4), strength=0.6, num_inference_steps=2)
    close(frames_of(ref, **kwargs), frames_of(v2v, **kwargs))


def test_save_pretrained_animatediff_controlnets_round_trip(animatediff, tmp_path):
    import diffusers
    import tiny_controlnet as tc

    _, ours = animatediff
    net = tiny.randomize_(diffusers.ControlNetModel(**tc.tiny_controlnet_config()), 10).eval()
    net.save_pretrained(tmp_path / "controlnet")
    controlled = quiet(vidcore.AnimateDiffControlNetPipeline.from_pipe(ours, controlnet=vidcore.load_model(
        tmp_path / "controlnet")))
    controlled.save_pretrained(tmp_path / "out")
    ref, index = diffusers_load(tmp_path / "out", "AnimateDiffControlNetPipeline")
    assert index["controlnet"] == ["diffusers", "ControlNetModel"]
    kwargs = dict(prompt="a cat walking", negative_prompt="blurry", num_frames=3, height=16, width=24,
                  num_inference_steps=2, conditioning_frames=tc.random_control_frames(3, 16, 24, seed=3))
    close(frames_of(ref, **kwargs), frames_of(controlled, **kwargs))

    sparse = tiny.randomize_(diffusers.SparseControlNetModel(**tc.tiny_sparse_config("scribble")), 20).eval()
    sparse.save_pretrained(tmp_path / "sparse")
    sparsectrl = quiet(vidcore.AnimateDiffSparseControlNetPipeline.from_pipe(ours, controlnet=vidcore.load_model(
        tmp_path / "sparse")))
    sparsectrl.save_pretrained(tmp_path / "out-sparse")
    ref, index = diffusers_load(tmp_path / "out-sparse", "AnimateDiffSparseControlNetPipeline")
    assert index["controlnet"] == ["diffusers", "SparseControlNetModel"]
    kwargs = dict(prompt="a cat walking", num_frames=4, height=16, width=24, num_inference_steps=2,
                  conditioning_frames=tc.random_control_frames(2, 16, 24, seed=3), controlnet_frame_indices=[0, 3])
    close(frames_of(ref, **kwargs), frames_of(sparsectrl, **kwargs))


def test_save_pretrained_animatediff_sdxl_round_trips(tmp_path):
    import tiny_sdxl

    setup = tiny_sdxl.build_tiny_animatediff_sdxl(tmp_path / "src")
    ours = quiet(vidcore.AnimateDiffSDXLPipeline.from_pretrained(setup.sdxl, motion_adapter=setup.adapter))
    ours.save_pretrained(tmp_path / "out")
    ref, index = diffusers_load(tmp_path / "out", "AnimateDiffSDXLPipeline")
    # written whole: diffusers' UNetMotionModel.from_unet2d would leave the SDXL add_embedding random
    assert index["unet"] == ["diffusers", "UNetMotionModel"] and index["text_encoder_2"][0] == "transformers"
    assert index["force_zeros_for_empty_prompt"] is ours.force_zeros_for_empty_prompt
    kwargs = dict(prompt="a cat", negative_prompt="blurry", num_frames=3, height=16, width=24, num_inference_steps=2)
    close(frames_of(ref, **kwargs), frames_of(ours, **kwargs))
    again = quiet(vidcore.AnimateDiffSDXLPipeline.from_pretrained(tmp_path / "out"))
    close(frames_of(ours, **kwargs), frames_of(again, **kwargs), tol=1e-6)


def test_save_pretrained_i2vgen_round_trips(tmp_path):
    tiny.build_tiny_i2vgen_pipeline(tmp_path / "src")
    ours = quiet(vidcore.I2VGenXLPipeline.from_pretrained(tmp_path / "src"))
    ours.save_pretrained(tmp_path / "out")
    ref, _ = diffusers_load(tmp_path / "out", "I2VGenXLPipeline")
    kwargs = dict(prompt="a red circle", image=image(), negative_prompt="blurry", clip_skip=None, num_frames=2,
                  height=16, width=24, num_inference_steps=2, global_rng=True)
    close(frames_of(ref, **kwargs), frames_of(ours, **kwargs))


def test_save_pretrained_svd_round_trips(tmp_path):
    tiny.build_tiny_svd_pipeline(tmp_path / "src")
    ours = quiet(vidcore.StableVideoDiffusionPipeline.from_pretrained(tmp_path / "src"))
    ours.save_pretrained(tmp_path / "out")
    ref, index = diffusers_load(tmp_path / "out", "StableVideoDiffusionPipeline")
    assert index["feature_extractor"][0] == "transformers"
    kwargs = dict(image=image(), num_frames=3, height=16, width=24, num_inference_steps=2, decode_chunk_size=2)
    close(frames_of(ref, **kwargs), frames_of(ours, **kwargs))


def test_save_pretrained_text2video_zero_round_trips(zero, tmp_path):
    zero.save_pretrained(tmp_path / "out")
    # diffusers' class has no optional components: a folder without a safety checker needs them passed as None
    # (as a diffusers-saved one does)
    ref, index = diffusers_load(tmp_path / "out", "TextToVideoZeroPipeline", safety_checker=None,
                                feature_extractor=None)
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    kwargs = dict(prompt="a bear", video_length=3, height=16, width=24, num_inference_steps=4, t0=1, t1=2)
    expected = ref(generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images
    got = zero(generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).frames[0]
    close(expected, got)


def test_vidcore_only_pipelines_write_components_diffusers_models_load(sd, tmp_path):
    import diffusers
    import transformers

    from vidcore.loading.architectures import architecture_of
    from vidcore.loading.save_pipeline import expand

    tiny_zero.build_tiny_pix2pix(tmp_path / "pix")
    pix2pix = vidcore.VideoInstructPix2PixPipeline.from_pretrained(tmp_path / "pix")
    zero = vidcore.TextToVideoZeroPipeline.from_pretrained(sd)
    net = vidcore.load_model(tiny_controlnet_folder(zero, tmp_path))
    controlled = vidcore.ControlledVideoPipeline.from_pipe(zero, controlnet=net)
    for pipe, name in ((pix2pix, "VideoInstructPix2PixPipeline"), (controlled, "ControlledVideoPipeline")):
        out = tmp_path / name
        pipe.save_pretrained(out)
        index = json.loads((out / "model_index.json").read_text())
        assert index["_class_name"] == name  # no diffusers pipeline of that name: vidcore's
        assert type(vidcore.DiffusionPipeline.from_pretrained(out)) is type(pipe)
        for component, module in expand(pipe.components).items():
            library, cls = index[component]
            loaded = getattr(diffusers if library == "diffusers" else transformers, cls).from_pretrained(out / component)
            if isinstance(module, torch.nn.Module):  # the same tensors, under diffusers' names for vidcore models
                expected = loaded.state_dict()
                mine = module.state_dict()
                if library == "diffusers":
                    keymap = architecture_of(module).keymap(module.config.to_diffusers_config())
                    mine, _ = keymap.convert(mine, None, direction="reverse")
                assert sorted(mine) == sorted(expected)
                assert all(torch.equal(mine[k], expected[k]) for k in expected)


def tiny_controlnet_folder(zero, tmp_path):
    import diffusers
    import tiny_controlnet

    net = tiny.randomize_(diffusers.ControlNetModel(**tiny_controlnet.tiny_controlnet_config()), 7).eval()
    net.save_pretrained(tmp_path / "controlnet")
    return tmp_path / "controlnet"


# -- settings: VAE slicing / tiling, FreeU, fused QKV ---------------------------------------------------------

def test_settings_equal_diffusers_and_disable_restores_exact_outputs(t2v_folder):
    import diffusers

    ours = quiet(vidcore.TextToVideoPipeline.from_pretrained(t2v_folder))
    ref = quiet(diffusers.TextToVideoSDPipeline.from_pretrained(t2v_folder))
    # 40 x 48 pixels = 20 x 24 latents: over the tiny VAE's 16-latent tile, so tiling cuts
    kwargs = dict(prompt="a cat", negative_prompt="blurry", num_frames=2, height=40, width=48, num_inference_steps=2)
    plain = frames_of(ours, **kwargs)
    close(frames_of(ref, **kwargs), plain)
    settings = [
        ("slicing", lambda: ours.enable_vae_slicing(), lambda: ref.vae.enable_slicing(),
         lambda: ours.disable_vae_slicing(), lambda: ref.vae.disable_slicing(), False),
        ("tiling", lambda: ours.enable_vae_tiling(), lambda: ref.vae.enable_tiling(),
         lambda: ours.disable_vae_tiling(), lambda: ref.vae.disable_tiling(), True),
        ("freeu", lambda: ours.enable_freeu(0.9, 0.2, 1.2, 1.4), lambda: ref.enable_freeu(0.9, 0.2, 1.2, 1.4),
         lambda: ours.disable_freeu(), lambda: ref.disable_freeu(), True),
        ("fused qkv", lambda: ours.fuse_qkv_projections(), lambda: ref.fuse_qkv_projections(),
         lambda: ours.unfuse_qkv_projections(), lambda: ref.unfuse_qkv_projections(), False),
    ]
    for name, on, ref_on, off, ref_off, changes in settings:
        on()
        ref_on()
        got = frames_of(ours, **kwargs)
        close(frames_of(ref, **kwargs), got)
        if changes:  # the setting does something here
            assert np.abs(got - plain).max() > 1e-3, name
        off()
        ref_off()
        assert np.array_equal(frames_of(ours, **kwargs), plain), name  # exactly the default again


def test_fused_qkv_on_temporal_and_cross_frame_attention(animatediff, zero):
    setup, ours = animatediff
    kwargs = dict(prompt="a cat walking", num_frames=4, height=16, width=24, num_inference_steps=2)
    plain = frames_of(ours, **kwargs)
    ours.fuse_qkv_projections()
    from vidcore.nn.fused_qkv import is_fused

    assert any(is_fused(m) for m in ours.motion_adapter.modules())  # the motion modules' temporal attentions too
    fused = frames_of(ours, **kwargs)
    ours.unfuse_qkv_projections()
    close(plain, fused, tol=1e-5)
    assert np.array_equal(frames_of(ours, **kwargs), plain)
    assert "fused_qkv_weight" not in "".join(ours.unet.state_dict())  # saving sees the separate projections
    zkw = dict(prompt="a bear", video_length=3, height=16, width=24, num_inference_steps=4, t0=1, t1=2)
    plain = frames_of(zero, **zkw)
    zero.unet.fuse_qkv_projections()  # the model-level switch; cross-frame attention takes k/v from frame 0
    fused = frames_of(zero, **zkw)
    zero.unet.unfuse_qkv_projections()
    close(plain, fused, tol=1e-5)
    assert np.array_equal(frames_of(zero, **zkw), plain)


def test_settings_a_model_lacks_raise():
    from vidcore.errors import UnsupportedFeatureError

    class Bare:  # an SVD-like VAE with no slicing
        pass

    pipe = vidcore.TextToVideoPipeline.__new__(vidcore.TextToVideoPipeline)
    pipe.vae, pipe.unet = Bare(), Bare()
    with pytest.raises(UnsupportedFeatureError, match="has no slicing"):
        pipe.enable_vae_slicing()
    with pytest.raises(UnsupportedFeatureError, match="has no FreeU"):
        pipe.enable_freeu(0.9, 0.2, 1.2, 1.4)


# -- cross_attention_kwargs: the LoRA scale ------------------------------------------------------------------

def test_cross_attention_kwargs_scale_equals_diffusers(animatediff, tmp_path):
    pytest.importorskip("peft", reason="diffusers' LoRA loading (the reference) needs peft")
    from safetensors.torch import save_file

    setup, ours = animatediff
    ref = setup.pipe
    path = tmp_path / "motion-lora.safetensors"
    save_file(ta.motion_lora(ref.unet, seed=1), str(path))
    kwargs = dict(prompt="a boat", negative_prompt="blurry", num_frames=3, height=8, width=16, num_inference_steps=2)
    plain = frames_of(ours, **kwargs)
    ref.load_lora_weights(str(path), adapter_name="zoom")
    ours.load_lora_weights(path, adapter_name="zoom")
    try:
        full = frames_of(ours, **kwargs)
        for scale in (0.4, 1.7):
            got = frames_of(ours, cross_attention_kwargs={"scale": scale}, **kwargs)
            close(frames_of(ref, cross_attention_kwargs={"scale": scale}, **kwargs), got)
            assert np.abs(got - full).max() > 1e-3
        assert np.array_equal(frames_of(ours, cross_attention_kwargs={"scale": 0.0}, **kwargs), plain)
        assert np.array_equal(frames_of(ours, **kwargs), full)  # the scale lasted one call
        # a LoRA fused by fuse_lora keeps its scale, as diffusers' merged layers do
        ref.fuse_lora(lora_scale=0.6)
        ours.fuse_lora(lora_scale=0.6)
        expected = frames_of(ref, cross_attention_kwargs={"scale": 0.3}, **kwargs)
        close(expected, frames_of(ours, cross_attention_kwargs={"scale": 0.3}, **kwargs))
        # fused q/k/v projections follow LoRA changes made after fusing them
        ours.fuse_qkv_projections()
        ours.unfuse_lora()
        close(plain, frames_of(ours, **kwargs), tol=1e-5)
        ours.fuse_lora(lora_scale=0.6)
        close(expected, frames_of(ours, **kwargs))
        ours.unfuse_qkv_projections()
    finally:
        ref.unfuse_lora()
        ref.unload_lora_weights()
        ours.unload_lora_weights()
    assert np.array_equal(frames_of(ours, **kwargs), plain)


def test_cross_attention_kwargs_checked_and_neutral_without_lora(t2v):
    kwargs = dict(prompt="a cat", num_frames=2, height=16, width=24, num_inference_steps=2)
    assert np.array_equal(frames_of(t2v, cross_attention_kwargs={"scale": 0.5}, **kwargs), frames_of(t2v, **kwargs))
    with pytest.raises(ValueError, match=r"cross_attention_kwargs keys must be among \['scale'\]"):
        t2v(cross_attention_kwargs={"scael": 0.5}, **kwargs)
    with pytest.raises(TypeError, match=r"cross_attention_kwargs\['scale'\] must be a number"):
        t2v(cross_attention_kwargs={"scale": "0.5"}, **kwargs)


# -- load_textual_inversion -----------------------------------------------------------------------------------

def test_load_textual_inversion_equals_diffusers(t2v_folder, tmp_path):
    import diffusers
    from safetensors.torch import save_file

    ours = quiet(vidcore.TextToVideoPipeline.from_pretrained(t2v_folder))
    ref = quiet(diffusers.TextToVideoSDPipeline.from_pretrained(t2v_folder))
    width = ours.text_encoder.get_input_embeddings().weight.shape[-1]
    g = torch.Generator().manual_seed(5)
    # diffusers' layout (a folder with learned_embeds.safetensors, one vector)
    (tmp_path / "cat-toy").mkdir()
    save_file({"<cat-toy>": torch.randn(width, generator=g)}, str(tmp_path / "cat-toy" / "learned_embeds.safetensors"))
    # Automatic1111's .pt (three vectors: <style>, <style>_1, <style>_2)
    torch.save({"name": "<style>", "string_to_param": {"*": torch.randn(3, width, generator=g)}, "step": 100},
               tmp_path / "style.pt")
    # Automatic1111's .safetensors (emb_params), named by token=
    save_file({"emb_params": torch.randn(2, width, generator=g)}, str(tmp_path / "bad-hands.safetensors"))
    kwargs = dict(num_frames=2, height=16, width=24, num_inference_steps=2)
    plain = frames_of(ours, prompt="a cat walking", **kwargs)
    for pipe in (ours, ref):
        pipe.load_textual_inversion(str(tmp_path / "cat-toy"))
        pipe.load_textual_inversion(str(tmp_path / "style.pt"))
        pipe.load_textual_inversion(str(tmp_path / "bad-hands.safetensors"), token="<bad-hands>")
    assert ours.tokenizer.get_vocab()["<style>_2"] == len(ours.tokenizer) - 3
    assert np.array_equal(frames_of(ours, prompt="a cat walking", **kwargs), plain)  # other prompts unchanged
    for prompt, negative in (("a <cat-toy> walking", None), ("a cat in <style> style", "<bad-hands>, blurry")):
        got = frames_of(ours, prompt=prompt, negative_prompt=negative, **kwargs)
        close(frames_of(ref, prompt=prompt, negative_prompt=negative, **kwargs), got)
        assert np.abs(got - plain).max() > 1e-3
    embeds = ours.text_encoder.get_input_embeddings().weight
    assert torch.equal(embeds[ours.tokenizer.convert_tokens_to_ids("<cat-toy>")],
                       ref.text_encoder.get_input_embeddings().weight[ref.tokenizer.convert_tokens_to_ids("<cat-toy>")])


def test_load_textual_inversion_errors_change_nothing(t2v_folder, tmp_path):
    ours = vidcore.TextToVideoPipeline.from_pretrained(t2v_folder)
    width = ours.text_encoder.get_input_embeddings().weight.shape[-1]
    size, rows = len(ours.tokenizer), ours.text_encoder.get_input_embeddings().weight.shape[0]
    with pytest.raises(ValueError, match="bare tensor: pass token="):
        ours.load_textual_inversion(torch.zeros(width))
    with pytest.raises(ValueError, match=f"the embedding is {width + 1} wide, the text encoder's tokens are {width}"):
        ours.load_textual_inversion({"<wide>": torch.zeros(width + 1)})
    with pytest.raises(ValueError, match=re.escape("'<|endoftext|>' is already in the tokenizer's vocabulary")):
        ours.load_textual_inversion({"<|endoftext|>": torch.zeros(width)})
    torch.save({"weights": torch.zeros(width), "other": torch.zeros(width)}, tmp_path / "two.pt")
    with pytest.raises(vidcore.errors.CheckpointError, match="not a textual-inversion embedding"):
        ours.load_textual_inversion(str(tmp_path / "two.pt"))
    assert len(ours.tokenizer) == size and ours.text_encoder.get_input_embeddings().weight.shape[0] == rows
    assert all(hasattr(pipeline_class(n), "load_textual_inversion") for n in
               ("TextToVideoPipeline", "VideoToVideoPipeline", "AnimateDiffPipeline", "AnimateDiffSDXLPipeline",
                "TextToVideoZeroPipeline"))
