"""The one denoising loop (vidcore.sampling.loop): its contract on toy predict/step functions, and that no
pipeline keeps a loop of its own."""

import ast
from pathlib import Path

import pytest
import torch

import vidcore
from vidcore.sampling.loop import Progress, StepEnd, denoise, frames_in_batch, scheduler_step

PIPELINES = Path(vidcore.__file__).parent / "pipelines"


def toy(latents, timesteps, **kw):
    """x <- x - 0.1 * (x * t) on each step: predict returns x * t, step subtracts a tenth."""
    calls = []

    def predict(x, t, i):
        calls.append((i, float(t)))
        return x * t

    def step(out, t, x):
        return x - 0.1 * out

    return denoise(latents, timesteps, predict, step, **kw), calls


def test_denoise_runs_predict_then_step_on_every_timestep():
    x = torch.ones(2, 3)
    out, calls = toy(x, torch.tensor([3.0, 2.0, 1.0]))
    assert calls == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert torch.equal(out, x * (1 - 0.3) * (1 - 0.2) * (1 - 0.1))


def test_step_end_replaces_latents_and_tensors_and_legacy_callback_every_n_steps():
    seen, legacy = [], []

    def on_step_end(pipe, i, t, tensors):
        seen.append((i, sorted(tensors)))
        return {"latents": tensors["latents"] * 0, "prompt_embeds": torch.full((1,), float(i))}

    end = StepEnd("pipe", on_step_end, ("latents", "prompt_embeds"), {"prompt_embeds": torch.zeros(1)},
                  callback=lambda i, t, x: legacy.append(i), callback_steps=2)
    out, _ = toy(torch.ones(2), torch.tensor([3.0, 2.0, 1.0]), step_end=end)
    assert torch.equal(out, torch.zeros(2))
    assert seen == [(i, ["latents", "prompt_embeds"]) for i in range(3)]
    assert legacy == [0, 2]
    assert float(end.tensors["prompt_embeds"]) == 2.0


def test_step_end_refuses_unknown_tensor_names():
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs must be among"):
        StepEnd(None, lambda *a: {}, ("latents", "noise_pred"), {"prompt_embeds": torch.zeros(1)})


class Pipe:
    _interrupt = False


def test_interrupt_skips_the_remaining_steps_and_is_consumed():
    pipe = Pipe()

    def stop_after_one(p, i, t, tensors):
        p._interrupt = True
        return {}

    end = StepEnd(pipe, stop_after_one)
    out, calls = toy(torch.ones(1), torch.tensor([3.0, 2.0, 1.0]), step_end=end)
    assert calls == [(0, 3.0)] and torch.equal(out, torch.ones(1) * 0.7)
    assert pipe._interrupt is False  # nothing of the call stays on the pipeline
    out, calls = toy(torch.ones(1), torch.tensor([1.0]), step_end=end)  # later runs of the same call stop too
    assert calls == []


class Clock:
    def __init__(self):
        self.log = []

    def begin(self, total):
        self.log.append(("begin", total))

    def next_step(self):
        self.log.append("step")

    def end(self):
        self.log.append("end")


def test_shared_progress_counts_steps_over_consecutive_runs_and_drives_the_clock():
    clock = Clock()
    with Progress(4, {"disable": True}, clock) as progress:
        _, first = toy(torch.ones(1), torch.tensor([4.0, 3.0]), progress=progress)
        _, second = toy(torch.ones(1), torch.tensor([2.0, 1.0]), progress=progress)
    assert [i for i, _ in first + second] == [0, 1, 2, 3]
    assert clock.log == [("begin", 4)] + ["step"] * 5 + ["end"]


def test_frames_in_batch_folds_b_c_f_h_w_into_the_batch():
    shapes = []

    def step(out, t, x):
        shapes.append(tuple(x.shape))
        return x + out

    x = torch.randn(2, 3, 4, 5, 6)
    out = frames_in_batch(step)(x, 0, x)
    assert shapes == [(8, 3, 5, 6)] and torch.equal(out, 2 * x)


def test_scheduler_step_passes_its_arguments():
    class Scheduler:
        def step(self, out, t, x, eta=None):
            return x + eta * out

    assert torch.equal(scheduler_step(Scheduler(), eta=2.0)(torch.ones(1), 0, torch.zeros(1)), torch.full((1,), 2.0))


def test_no_pipeline_has_a_sampling_loop_of_its_own():
    """Pipelines give predict/step callables; the loop over timesteps lives in vidcore/sampling/loop.py only."""
    for path in PIPELINES.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.For):
                target = ast.unparse(node.iter)
                assert "timesteps" not in target, f"{path.name}:{node.lineno} loops over {target}"
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("progress_bar") and any(
                    k.arg == "total" for k in node.keywords):
                # a bar with a total is a sampling run: it must be handed to the loop (Text2Video-Zero) or made by
                # VideoPipeline.sample
                assert path.name in ("base.py", "text2video_zero.py"), f"{path.name}:{node.lineno}"


def test_the_loop_knows_no_pipeline_and_no_feature():
    """loop.py imports nothing of vidcore and names no pipeline, model or feature: what differs lives in predict/step."""
    source = (Path(vidcore.__file__).parent / "sampling" / "loop.py").read_text()
    tree = ast.parse(source)
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert all(not m.startswith(".") and not m.startswith("vidcore") for m in imported), imported
    assert not any(isinstance(n, ast.Call) and ast.unparse(n.func) == "isinstance" for n in ast.walk(tree))
    for node in ast.walk(tree):  # docstrings may name examples; the code may not
        if hasattr(node, "body") and isinstance(node.body, list):
            node.body = [n for n in node.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                                                      and isinstance(n.value.value, str))] or [ast.Pass()]
    body = ast.unparse(tree)
    for word in ("Pipeline", "unet", "free_noise", "free_init", "context", "keyframe", "controlnet", "guidance"):
        assert word not in body, word
