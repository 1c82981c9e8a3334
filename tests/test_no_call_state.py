"""No per-call state outlives a call (design principle 13), and every setting a user turns on and off restores
the exact outputs when turned off.

A call with every per-call feature on (FreeNoise windows, a step cache, callbacks, cross-frame attention) leaves
the pipeline's attributes and every module's plain attributes as they were before the call; no module ever gets
an instance-level ``forward``."""

from __future__ import annotations

import pytest
import torch

import tiny
import tiny_zero
import vidcore
from vidcore.nn.attention import Attention

pytestmark = pytest.mark.usefixtures("one_thread")

TENSOR_STATE = ("_parameters", "_buffers", "_modules")


def module_state(model: torch.nn.Module) -> dict:
    """Every module's plain attributes (not its parameters, buffers or children), by module name."""
    return {name: {k: v for k, v in vars(m).items() if k not in TENSOR_STATE and not k.startswith("_")}
            for name, m in model.named_modules()}


def pipeline_state(pipe) -> dict:
    return {k: v for k, v in vars(pipe).items()}


def no_instance_forward(*models) -> bool:
    return not any("forward" in vars(m) for model in models for m in model.modules())


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    folder = tmp_path_factory.mktemp("state") / "t2v"
    tiny.build_tiny_t2v_pipeline(folder)
    pipe = vidcore.TextToVideoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, **kwargs):
    kwargs = {"num_frames": 6, "output_type": "latent", "num_inference_steps": 2, **kwargs}
    return pipe("a cat", height=16, width=16, generator=torch.Generator().manual_seed(0), **kwargs).frames


def test_a_call_with_every_feature_leaves_nothing_behind(t2v):
    t2v.enable_free_noise(context_length=4, context_stride=2)
    t2v.enable_free_noise_split_inference(spatial_split_size=8, temporal_split_size=2)
    t2v.enable_deep_cache(cache_interval=2)
    try:
        before_pipe, before_unet = pipeline_state(t2v), module_state(t2v.unet)
        seen = []

        def on_step(pipe, i, t, tensors):
            blocks = pipe.temporal_blocks()
            seen.append(all(b.frame_windows is not None for b in blocks) and getattr(pipe.unet, "step_cache", None) is not None)
            return {}

        run(t2v, callback_on_step_end=on_step)
        assert seen and all(seen)  # during the run the settings reach the UNet ...
        assert pipeline_state(t2v).keys() == before_pipe.keys()
        assert all(pipeline_state(t2v)[k] is v for k, v in before_pipe.items())
        assert module_state(t2v.unet) == before_unet  # ... and after it nothing of the call stays on it
        assert getattr(t2v.unet, "step_cache", None) is None and all(b.frame_windows is None for b in t2v.temporal_blocks())
        assert no_instance_forward(t2v.unet, t2v.vae)
    finally:
        t2v.disable_free_noise_split_inference()
        t2v.disable_free_noise()
        t2v.disable_deep_cache()


def test_an_interrupted_call_leaves_nothing_behind(t2v):
    before = pipeline_state(t2v)

    def stop(pipe, i, t, tensors):
        pipe._interrupt = True
        return {}

    steps = []
    run(t2v, callback_on_step_end=lambda p, i, t, k: steps.append(i) or stop(p, i, t, k))
    assert steps == [0] and pipeline_state(t2v) == before and not t2v.interrupt


@pytest.mark.parametrize("setting", ["freeu", "forward_chunking", "free_noise_split", "vae_slicing", "vae_tiling",
                                     "model_cpu_offload", "gradient_checkpointing"])
def test_disable_restores_the_exact_output(t2v, setting):
    plain = run(t2v, output_type="pt")
    on, off = {
        "freeu": (lambda: t2v.unet.enable_freeu(0.9, 0.2, 1.2, 1.4), t2v.unet.disable_freeu),
        "forward_chunking": (lambda: t2v.unet.enable_forward_chunking(1), t2v.unet.disable_forward_chunking),
        "free_noise_split": (lambda: t2v.enable_free_noise_split_inference(4, 2),
                             t2v.disable_free_noise_split_inference),
        "vae_slicing": (t2v.vae.enable_slicing, t2v.vae.disable_slicing),
        "vae_tiling": (lambda: t2v.vae.enable_tiling(tile_sample_min_size=8), t2v.vae.disable_tiling),
        "model_cpu_offload": (lambda: t2v.enable_model_cpu_offload("cpu"), t2v.disable_model_cpu_offload),
        "gradient_checkpointing": (lambda: [m.enable_gradient_checkpointing() for m in (t2v.unet, t2v.vae)],
                                   lambda: [m.disable_gradient_checkpointing() for m in (t2v.unet, t2v.vae)]),
    }[setting]
    on()
    try:
        assert no_instance_forward(t2v.unet, t2v.vae)  # settings are fields or hooks, never forward replacement
        run(t2v, output_type="pt")
    finally:
        off()
    assert torch.equal(run(t2v, output_type="pt"), plain)


def test_text2video_zero_restores_attention_and_scheduler(tmp_path):
    sd = tiny_zero.build_tiny_sd(tmp_path / "sd")
    pipe = vidcore.TextToVideoZeroPipeline.from_pretrained(tmp_path / "sd", scheduler=vidcore.schedulers.from_config(
        dict(sd.scheduler.config) | {"_class_name": "DPMSolverMultistepScheduler"}))
    pipe.set_progress_bar_config(disable=True)
    scheduler = pipe.scheduler
    pipe(prompt="x", video_length=3, height=16, width=16, num_inference_steps=6, t0=2, t1=3, output_type="latent")
    assert pipe.scheduler is scheduler  # phase 3 runs on its own copy; the pipeline's scheduler is never swapped
    assert all(m.cross_frame is None for m in pipe.unet.modules() if isinstance(m, Attention))


def test_interrupting_free_init_stops_its_rounds(t2v):
    """The latents of the interrupted run come back: no later FreeInit round starts (and re-noises them)."""
    def stop_at_1(pipe, i, t, tensors):
        if i == 1:
            pipe._interrupt = True
        return {}

    plain = run(t2v, callback_on_step_end=stop_at_1, num_inference_steps=3)
    t2v.enable_free_init(num_iters=3)
    try:
        steps = []
        out = run(t2v, callback_on_step_end=lambda p, i, t, k: steps.append(i) or stop_at_1(p, i, t, k),
                  num_inference_steps=3)
    finally:
        t2v.disable_free_init()
    assert steps == [0, 1] and torch.equal(out, plain)


def test_free_init_rounds_start_from_the_call_embeddings(t2v):
    """ModelScope's FreeInit rounds each start from the call's prompt embeddings: a callback's replacement counts
    for the rest of its round only (as before the one loop)."""
    seen = []

    def halve(pipe, i, t, tensors):
        seen.append(tensors["prompt_embeds"].clone())
        return {"prompt_embeds": tensors["prompt_embeds"] / 2}

    t2v.enable_free_init(num_iters=2)
    try:
        run(t2v, callback_on_step_end=halve, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    finally:
        t2v.disable_free_init()
    assert len(seen) == 4  # 2 rounds x 2 steps
    assert torch.equal(seen[2], seen[0]) and torch.equal(seen[1], seen[0] / 2)


def test_text2video_zero_interrupted_in_its_first_phase(tmp_path):
    tiny_zero.build_tiny_sd(tmp_path / "sd")
    pipe = vidcore.TextToVideoZeroPipeline.from_pretrained(tmp_path / "sd")
    pipe.set_progress_bar_config(disable=True)
    steps = []

    def stop(p, i, t, tensors):
        steps.append(i)
        p._interrupt = True
        return {}

    out = pipe(prompt="x", video_length=3, height=16, width=16, num_inference_steps=6, t0=2, t1=3,
               output_type="latent", callback_on_step_end=stop).frames
    assert steps == [0] and out.shape[2] == 3
    assert all(torch.equal(out[:, :, k], out[:, :, 0]) for k in range(3))  # the first frame so far, every frame


def test_disable_model_cpu_offload_without_offload_moves_nothing(t2v, monkeypatch):
    moves = []
    monkeypatch.setattr(t2v, "to", lambda *a, **k: moves.append((a, k)))
    t2v.disable_model_cpu_offload()  # offload was never on: the models stay where the user put them
    assert moves == []
    t2v.disable_model_cpu_offload("cpu")
    assert moves == [(("cpu",), {})]
