"""The demo motion LoRA: the training script runs and lowers its validation loss, and the shipped LoRA
(``vidcore/demo/lora_up_right``) makes "moving up right" videos that the base model cannot, while the old
prompts keep their directions."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from vidcore.demo.evaluate import score_videos, summarize
from vidcore.demo.evaluate_lora import (LORA_FILE, apply_lora, generate_seeds, load_pipeline, new_motion_score,
                                        read_lora)
from vidcore.demo.data import all_combinations
from vidcore.demo.train_lora import WEIGHTS_NAME, LoRATrainConfig, train_lora
from vidcore.training.lora import remove_lora

STEPS = 10  # DDIM steps in these checks (the shipped figures use 25; see lora_up_right/README.md)


def test_training_smoke(tmp_path):
    cfg = replace(LoRATrainConfig(), steps=30, batch=4, new_clips=12, old_clips=48, val_clips=8, val_every=10,
                  log_every=10, rank=4, lr=5e-3, warmup=2)
    out = train_lora(cfg, tmp_path / "lora", quiet=True)
    log = json.loads((out / "train_log.json").read_text())
    val = [p["val_loss"] for p in log["val_loss"]]
    assert [p["step"] for p in log["val_loss"]] == [0, 10, 20, 30]
    assert val[-1] < 0.9 * val[0], val
    assert log["config"]["rank"] == 4 and log["command"].startswith("python -m vidcore.demo.train_lora")

    state = read_lora(out / WEIGHTS_NAME)
    assert len(state) == 2 * len(log["layers"]) and all(k.startswith("unet.") for k in state)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in state)
    pipe = load_pipeline()
    x = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    with torch.no_grad():
        before = pipe.unet(x, t, ctx)
        assert sorted(apply_lora(pipe.unet, state)) == sorted(log["layers"])
        with_lora = pipe.unet(x, t, ctx)
        remove_lora(pipe.unet)
        after = pipe.unet(x, t, ctx)
    assert not torch.allclose(before, with_lora, atol=1e-4) and torch.equal(before, after)
    with pytest.raises(FileExistsError):
        train_lora(cfg, out, quiet=True)


def test_shipped_lora_teaches_up_right_and_keeps_the_old_prompts():
    assert LORA_FILE.is_file()
    pipe = load_pipeline()
    seeds = [2000, 2001]  # seeds neither training nor the shipped evaluation (1000..) used
    base = new_motion_score(pipe, "up right", seeds[:1], STEPS, 5.0)
    pipe.load_lora_weights(LORA_FILE)  # the shipped file, read as any LoRA file is
    lora = new_motion_score(pipe, "up right", seeds, STEPS, 5.0)
    assert lora["accuracy"] >= 0.8, lora
    assert base["accuracy"] <= 0.25 and base["median_angle_error"] > 30, base
    combos = [c for i, c in enumerate(all_combinations()) if i // 4 % 2 == 0]  # 24 old prompts: every direction, color
    videos = generate_seeds(pipe, combos, [2000], STEPS, 5.0)
    old = summarize(score_videos(videos, combos))
    assert old["direction_accuracy"] >= 0.9 and old["color_accuracy"] >= 0.9, old
