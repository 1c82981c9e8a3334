"""The image-to-video demo: its training data (the start position tells the direction), a two-step training run
that writes a pipeline folder vidcore loads and samples from, and the evaluation's scores on it."""

import numpy as np

from vidcore.demo.data import DIRECTIONS
from vidcore.demo.evaluate import centroids
from vidcore.demo.train_svd import SVDDemoConfig, make_clips


def test_first_frame_position_tells_the_direction():
    cfg = SVDDemoConfig()
    clips = make_clips(cfg, 48, seed=3)
    for k, clip in enumerate(clips):
        direction = list(DIRECTIONS)[k % 4]
        video = ((clip.permute(0, 2, 3, 1).numpy() + 1) / 2)
        cx, cy = centroids(video[:1])[0]
        ux, uy = DIRECTIONS[direction]
        along, across = (cx, cy) if ux else (cy, cx)
        # starts on the near side of its axis (the far side is where it goes) and near the middle across
        assert (along < cfg.size / 2) == (ux + uy > 0)
        assert abs(across - cfg.size / 2) < 0.25 * cfg.size


def test_tiny_training_run_loads_and_is_scored(tmp_path):
    import vidcore
    from vidcore.demo import evaluate_svd, train_svd

    out = tmp_path / "svd-demo"
    assert train_svd.main(["--out", str(out), "--vae-steps", "2", "--unet-steps", "2", "--set", "num_clips=8",
                           "--set", "vae_batch=2", "--set", "unet_batch=2", "--set", "log_every=1"]) == 0
    log = (out / "train_log.json").read_text()
    assert '"unet_loss"' in log and '"scaling_factor"' in log
    pipe = vidcore.StableVideoDiffusionPipeline.from_pretrained(out)
    assert pipe.unet.config.num_frames == 8
    summary = evaluate_svd.evaluate(out, seeds=1, steps=2, verbose=False, limit=2)
    assert summary["videos"] == 2
    assert all(0.0 <= summary[k] <= 1.0 for k in ("color_every_frame", "color_frames", "direction"))


def test_cli_without_model_uses_the_shipped_demo(tmp_path, capsys, monkeypatch):
    import PIL.Image

    import vidcore.cli.generate
    from vidcore.cli import main
    from vidcore.demo.evaluate_svd import first_frames

    images, _ = first_frames(1)
    PIL.Image.fromarray((images[0] * 255).round().astype(np.uint8)).save(tmp_path / "first.png")
    written = []
    monkeypatch.setattr(vidcore.cli.generate, "write_video", lambda frames, path, fps: written.append((frames, fps))
                        or str(path))
    assert main(["generate", "image-to-video", "--image", str(tmp_path / "first.png"), "--steps", "2", "--device",
                 "cpu", "--no-progress", "-o", str(tmp_path / "o.mp4")]) == 0
    out = capsys.readouterr().out
    assert "no --model given: using vidcore's built-in image-to-video demo model" in out
    frames, fps = written[0]
    assert np.asarray(frames).shape == (8, 32, 32, 3) and fps == 7
