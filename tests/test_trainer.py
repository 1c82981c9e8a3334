"""vidcore.training.train_lora on a tiny ModelScope pipeline (and a tiny AnimateDiff): kill-and-resume gives the
uninterrupted run's weights bit for bit, 2 gloo processes equal one process with the doubled batch, the epsilon and
v objectives, EMA, MotionDirector's two LoRAs, and the config / resume errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import tiny_training as tt
import torch
from safetensors.torch import load_file

from vidcore.errors import ArgumentError, CheckpointError, UnsupportedFeatureError
from vidcore.training import TrainLoRAConfig, train_lora
from vidcore.training.checkpoint import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    model = tt.build_model(root / "model")
    data = tt.write_clips(root / "data", kinds=("mp4", "gif", "frames"), frames=6)
    return model, data


def config(setup, out, **overrides) -> TrainLoRAConfig:
    model, data = setup
    base = dict(model=str(model), data_dir=str(data), output_dir=str(out), rank=4, steps=4, num_frames=4, height=16,
                width=16, learning_rate=1e-2, progress=False, crop="random", sample_stride=1)
    return TrainLoRAConfig(**(base | overrides))


def weights(path) -> dict:
    return load_file(str(path))


def assert_equal_files(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_trains_saves_peft_lora_log_checkpoints_and_samples(setup, tmp_path):
    cfg = config(setup, tmp_path / "out", steps=3, checkpoint_every=1, keep_checkpoints=2, sample_every=3,
                 sample_steps=2, ema=True)
    losses = []
    path = train_lora(cfg, callback=lambda step, loss: losses.append((step, loss)))
    assert path == tmp_path / "out" / "pytorch_lora_weights.safetensors"
    lora = weights(path)
    assert lora and all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in lora)
    assert all("temp_attentions" in k or "transformer_in" in k for k in lora)  # target "temporal"
    assert any(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k)  # B moved off its zero init
    ema = weights(tmp_path / "out" / "pytorch_lora_weights_ema.safetensors")
    assert ema.keys() == lora.keys() and any(not torch.equal(ema[k], lora[k]) for k in lora)
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert [p["step"] for p in log["loss"]] == [1, 2, 3] and [s for s, _ in losses] == [1, 2, 3]
    assert log["prediction_type"] == "epsilon" and log["config"]["rank"] == 4
    assert [s for s, _ in list_checkpoints(tmp_path / "out")] == [2, 3]  # keep_checkpoints=2
    assert not [p for p in (tmp_path / "out" / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporaries
    assert (tmp_path / "out" / "samples" / "step_000003.mp4").stat().st_size > 0
    # the names are diffusers' UNet3DConditionModel layer names, with its shapes (diffusers' ModelScope pipeline has
    # no LoRA loader; vidcore's does, see test_pipeline_lora)
    from diffusers import UNet3DConditionModel

    modules = dict(UNet3DConditionModel.from_pretrained(setup[0], subfolder="unet").named_modules())
    for key, value in lora.items():
        layer = modules[key.removeprefix("unet.").rsplit(".lora_", 1)[0]]
        assert value.shape == ((4, layer.in_features) if ".lora_A." in key else (layer.out_features, 4))


def _train_until_killed(cfg: TrainLoRAConfig, stop: int) -> None:
    """The run the test kills: after checkpoint ``stop`` is written it waits for the parent's SIGKILL."""
    torch.set_num_threads(1)

    def callback(step, loss):
        if step == stop:
            time.sleep(120)

    train_lora(cfg, callback=callback)


@pytest.mark.skipif(sys.platform != "linux", reason="kills a child process with SIGKILL")
def test_killed_and_resumed_run_equals_the_uninterrupted_one(setup, tmp_path):
    """Run A: 5 steps straight. Run B: a spawned process killed with SIGKILL after writing checkpoint 2, then resumed
    to 5 from its newest checkpoint. Same LoRA, same EMA, same loss curve, bit for bit (LoRA dropout on: the RNG
    states are restored too)."""
    import multiprocessing

    kw = dict(steps=5, checkpoint_every=1, ema=True, dropout=0.1, gradient_accumulation_steps=2, batch_size=2)
    a = train_lora(config(setup, tmp_path / "a", **kw))
    cfg_b = config(setup, tmp_path / "b", **kw)
    # spawn, not fork: a fork of this process (torch's and compile workers' threads running) can deadlock in the child
    child = multiprocessing.get_context("spawn").Process(target=_train_until_killed, args=(cfg_b, 2))
    child.start()
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "b" / "checkpoints" / "step_000002").is_dir():
            assert child.is_alive(), f"the run stopped early (exit code {child.exitcode})"
            assert time.monotonic() < deadline, "the run wrote no checkpoint"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == -signal.SIGKILL
    assert not (tmp_path / "b" / "pytorch_lora_weights.safetensors").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [1, 2]
    with pytest.raises(ArgumentError, match="already has training checkpoints: pass resume=True"):
        train_lora(cfg_b)
    b = train_lora(replace(cfg_b, resume=True))
    assert_equal_files(a, b)
    assert_equal_files(tmp_path / "a" / "pytorch_lora_weights_ema.safetensors",
                       tmp_path / "b" / "pytorch_lora_weights_ema.safetensors")
    log_a, log_b = (json.loads((tmp_path / x / "train_log.json").read_text())["loss"] for x in "ab")
    assert log_a == log_b
    # a checkpoint of another configuration is refused with the setting named
    with pytest.raises(CheckpointError, match="was trained with rank=4, this run has rank=8"):
        train_lora(replace(cfg_b, rank=8, resume=str(tmp_path / "b" / "checkpoints" / "step_000002")))


# ----------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, cfg_json: str, result: str):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        path = train_lora(TrainLoRAConfig(**json.loads(cfg_json)))
        Path(f"{result}.{rank}").write_text(str(path))
    except BaseException as err:
        Path(f"{result}.{rank}").write_text(f"ERROR {type(err).__name__}: {err}")
        raise


@pytest.mark.skipif(sys.platform != "linux", reason="gloo ranks on localhost")
def test_two_gloo_processes_equal_one_with_the_doubled_batch(setup, tmp_path):
    import torch.multiprocessing as mp

    # lr 1e-4: Adam turns the float rounding of the two ways of averaging into weight differences ~ lr * 1e-2 (the
    # logged losses and gradient norms below check the samples and the averaging at full scale)
    kw = dict(steps=3, gradient_accumulation_steps=2, checkpoint_every=2, ema=True, learning_rate=1e-4)
    train_lora(config(setup, tmp_path / "one", batch_size=2, **kw))  # 3 clips: batches cross epochs
    cfg = config(setup, tmp_path / "two", batch_size=1, **kw)
    # spawn, not fork: a fork of this process (torch's and compile workers' threads running) can deadlock in a child
    mp.start_processes(_rank, args=(2, _free_port(), json.dumps(cfg.to_dict()), str(tmp_path / "result")), nprocs=2,
                       join=True, start_method="spawn")
    for rank in (0, 1):
        assert (tmp_path / f"result.{rank}").read_text() == str(tmp_path / "two" / "pytorch_lora_weights.safetensors")
    for name in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights_ema.safetensors"):
        one, two = weights(tmp_path / "one" / name), weights(tmp_path / "two" / name)
        assert one.keys() == two.keys()
        for k in one:
            assert (one[k] - two[k]).abs().max() <= 1e-6, (name, k)
    log = json.loads((tmp_path / "two" / "train_log.json").read_text())
    assert log["processes"] == 2
    one_log = json.loads((tmp_path / "one" / "train_log.json").read_text())["loss"]
    for p, q in zip(log["loss"], one_log):  # the same samples, and the gradients averaged (not summed)
        assert p["loss"] == pytest.approx(q["loss"], rel=1e-5)
        assert p["grad_norm"] == pytest.approx(q["grad_norm"], rel=1e-4)
    assert [s for s, _ in list_checkpoints(tmp_path / "two")] == [2]  # rank 0 alone wrote it


# ----------------------------------------------------------------------------------------- objectives and options


def test_v_prediction_model_trains_on_v(tmp_path, setup):
    model = tt.build_model(tmp_path / "v-model", {"prediction_type": "v_prediction"})
    train_lora(config((model, setup[1]), tmp_path / "v", steps=1, mixed_precision="bf16"))
    log = json.loads((tmp_path / "v" / "train_log.json").read_text())
    assert log["prediction_type"] == "v_prediction"
    # one step from the same state on the same sample: the v-model's loss differs from the epsilon model's
    train_lora(config(setup, tmp_path / "eps", steps=1, mixed_precision="bf16"))
    eps = json.loads((tmp_path / "eps" / "train_log.json").read_text())
    assert log["loss"][0]["loss"] != eps["loss"][0]["loss"]


def test_v_target_is_the_velocity(setup, tmp_path):
    from vidcore.training.trainer import TrainingRun

    run = TrainingRun.__new__(TrainingRun)
    from vidcore.schedulers import DDPMScheduler

    run.noise_schedule = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    run.prediction_type, run.device = "v_prediction", torch.device("cpu")
    x0, noise, t = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2), torch.tensor([10, 900])
    a = run.noise_schedule.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    v = run.regression_target(x0, noise, t)
    # x0 = sqrt(a) x_t - sqrt(1 - a) v: the identity that defines v
    xt = run.noise_schedule.add_noise(x0, noise, t)
    assert torch.allclose(a.sqrt() * xt - (1 - a).sqrt() * v, x0, atol=1e-5)


@pytest.mark.parametrize("motion_director", [False, True])
def test_gradient_checkpointing(setup, tmp_path, motion_director):
    """The same LoRA with and without checkpointing; MotionDirector's paths switch branches off and freeze them
    around each forward, and the backward's recompute must see the same settings."""
    plain = config(setup, tmp_path / "plain", steps=3, motion_director=motion_director)
    ckpt = config(setup, tmp_path / "gc", steps=3, motion_director=motion_director, gradient_checkpointing=True)
    for name in ("pytorch_lora_weights",) + (("spatial_lora_weights",) if motion_director else ()):
        if name == "pytorch_lora_weights":
            a, b = weights(train_lora(plain)), weights(train_lora(ckpt))
        else:
            a, b = (weights(tmp_path / d / f"{name}.safetensors") for d in ("plain", "gc"))
        assert a.keys() == b.keys()
        for k, v in a.items():
            assert torch.allclose(v, b[k], atol=1e-6), k


def test_motion_director_trains_two_disjoint_loras(setup, tmp_path):
    cfg = config(setup, tmp_path / "md", steps=3, motion_director=True, checkpoint_every=3, sample_every=3,
                 sample_steps=1)
    temporal = weights(train_lora(cfg))
    spatial = weights(tmp_path / "md" / "spatial_lora_weights.safetensors")
    assert temporal and spatial and not temporal.keys() & spatial.keys()
    assert all("temp_attentions" in k or "transformer_in" in k for k in temporal)
    # MotionDirector's layers: image self-attention and feed-forward (not the text cross-attention); temporal
    # attn1, attn2 and feed-forward
    assert all(".attentions." in k and "temp_attentions" not in k and ".attn2." not in k for k in spatial)
    assert any(".attn1." in k for k in spatial) and any(".ff.net." in k for k in spatial)
    assert {part for k in temporal for part in (".attn1.", ".attn2.", ".ff.net.") if part in k} == {
        ".attn1.", ".attn2.", ".ff.net."}
    for lora in (temporal, spatial):  # both paths trained
        assert any(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k)
    log = json.loads((tmp_path / "md" / "train_log.json").read_text())
    assert len(log["lora_layers"]) == len(temporal) // 2 + len(spatial) // 2
    for point in log["loss"]:
        assert point["loss"] == pytest.approx(point["temporal_loss"] + point.get("spatial_loss", 0.0))
    assert any("spatial_loss" in point for point in log["loss"])


def test_motion_director_paths_touch_only_their_branches(setup, tmp_path):
    """In the spatial path only spatial branches get gradients; in the temporal path only temporal ones."""
    from vidcore.training.data import VideoFolder
    from vidcore.training.ddp import Distributed
    from vidcore.training.motion_director import branch_parameters, branches
    from vidcore.training.trainer import TrainingRun

    cfg = config(setup, tmp_path / "md2", motion_director=True)
    run = TrainingRun(cfg, Distributed(), torch.device("cpu"), VideoFolder(cfg.data_dir, 4, 16, 16))
    with torch.no_grad():  # B != 0 so every branch passes gradient to its A
        for p in run.params:
            p.normal_(0, 0.1)
    latents, noise, t, text = run.batch(0)
    for on, off in ((run.spatial, run.temporal), (run.temporal, run.spatial)):
        run.unet.zero_grad(set_to_none=True)
        with branches(off, on=False, train=False):
            run.unet(latents, t, text).square().mean().backward()
        assert all(p.grad is not None and p.grad.abs().max() > 0 for p in branch_parameters(on))
        assert all(p.grad is None for p in branch_parameters(off))
        assert all(p.requires_grad for p in branch_parameters(off))  # restored after the block


def test_animatediff_motion_adapter_lora(tmp_path):
    pytest.importorskip("peft")
    import tiny_animatediff as ta

    tiny_ad = ta.build_tiny_animatediff(tmp_path / "ad")
    data = tt.write_clips(tmp_path / "data", kinds=("mp4", "frames"), frames=5)
    cfg = TrainLoRAConfig(model=str(tiny_ad.sd), motion_adapter=str(tiny_ad.adapter), data_dir=str(data),
                          output_dir=str(tmp_path / "out"), rank=2, steps=2, num_frames=3, height=16, width=16,
                          learning_rate=1e-2, motion_director=True, progress=False, sample_every=2, sample_steps=2)
    lora = weights(train_lora(cfg))
    assert lora and all(".motion_modules." in k for k in lora)
    spatial = weights(tmp_path / "out" / "spatial_lora_weights.safetensors")
    assert spatial and not any("motion_modules" in k or ".attn2." in k for k in spatial)
    assert (tmp_path / "out" / "samples" / "step_000002.mp4").is_file()
    tiny_ad.pipe.load_lora_weights(str(tmp_path / "out"))  # diffusers reads the motion LoRA
    assert tiny_ad.pipe.get_list_adapters()["unet"]


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("overrides, message", [
    (dict(rank=0), "rank must be a positive integer, got 0"),
    (dict(steps=-1), "steps must be a positive integer, got -1"),
    (dict(mixed_precision="fp8"), r"mixed_precision must be one of \('no', 'bf16', 'fp16'\), got 'fp8'"),
    (dict(height=20), "height and width must be multiples of 8, got 20x16"),
    (dict(learning_rate=0), "learning_rate must be > 0"),
    (dict(motion_director=True, target="both"), "motion_director trains its own spatial and temporal LoRAs"),
    (dict(crop="left"), r"crop must be one of \('center', 'random'\)"),
    # the LoRA's own settings fail when the config is made, not after the model has loaded
    (dict(alpha=0), "LoRA alpha must be > 0"),
    (dict(dropout=1.5), r"LoRA dropout must be in \[0, 1\)"),
    (dict(target="temp(oral"), "neither a preset .* nor a regular expression"),
])
def test_config_errors(setup, tmp_path, overrides, message):
    with pytest.raises(ArgumentError, match=message):
        config(setup, tmp_path, **overrides)


def test_resume_from_a_missing_folder(setup, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder .*nope does not exist"):
        train_lora(config(setup, tmp_path / "out", resume=str(tmp_path / "nope")))


def test_image_model_without_adapter(tmp_path, setup):
    model = tmp_path / "sd"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ArgumentError, match="is an image model: pass motion_adapter"):
        train_lora(config((model, setup[1]), tmp_path / "out"))


def test_vidcore_pipeline_loads_the_trained_lora(setup, tmp_path):
    """The written file, loaded with the pipeline's load_lora_weights, gives the frames of the trained model itself
    (the base UNet plus the trainer's branches)."""
    import vidcore
    from vidcore.training import add_lora, set_lora_state_dict
    from vidcore.training.lora import LoRAConfig

    path = train_lora(config(setup, tmp_path / "out", steps=2, alpha=8))
    pipe = vidcore.TextToVideoPipeline.from_pretrained(setup[0])
    if not hasattr(pipe, "load_lora_weights"):
        pytest.skip("this vidcore's TextToVideoPipeline has no load_lora_weights")
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a red ball", num_frames=4, height=16, width=16, num_inference_steps=2, output_type="np")
    base = pipe(generator=torch.Generator().manual_seed(0), **kw).frames
    trained = vidcore.TextToVideoPipeline.from_pretrained(setup[0])
    trained.set_progress_bar_config(disable=True)
    add_lora(trained.unet, LoRAConfig(rank=4, target="temporal"))
    set_lora_state_dict(trained.unet, weights(path), prefix="unet.")
    expected = trained(generator=torch.Generator().manual_seed(0), **kw).frames
    pipe.load_lora_weights(str(tmp_path / "out"))
    got = pipe(generator=torch.Generator().manual_seed(0), **kw).frames
    assert abs(expected - base).max() > 1e-3  # the LoRA matters
    assert abs(got - expected).max() < 1e-5


def test_resuming_an_older_checkpoint_drops_the_abandoned_ones(setup, tmp_path):
    """Resumed from step 1 of a run that reached step 3, the new run's checkpoints replace the old run's: with
    keep_checkpoints=1 the one left is the new step 2 (not the abandoned step 3), and it holds the new run's
    weights. A temporary folder left by a killed write is swept."""
    out = tmp_path / "out"
    train_lora(config(setup, out, steps=3, checkpoint_every=1))
    assert [s for s, _ in list_checkpoints(out)] == [1, 2, 3]
    (out / "checkpoints" / ".step_000004.x.tmp").mkdir()
    resumed = config(setup, out, steps=2, checkpoint_every=1, keep_checkpoints=1,
                     resume=str(out / "checkpoints" / "step_000001"))
    final = weights(train_lora(resumed))
    assert [s for s, _ in list_checkpoints(out)] == [2]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    kept = weights(out / "checkpoints" / "step_000002" / "pytorch_lora_weights.safetensors")
    assert kept.keys() == final.keys() and all(torch.equal(kept[k], final[k]) for k in kept)
