"""vidcore's built-in demo model: a tiny text-to-video pipeline trained by the project on synthetic clips and
shipped in the package (``model/``, diffusers layout, fp16 safetensors), so that ``vidcore generate
text-to-video`` without ``--model`` makes a real video offline.

``data.py`` makes the clips (one colored shape crossing a black 32x32 frame in 8 frames), ``train.py``
trains the pipeline (``python -m vidcore.demo.train --out DIR``) and ``evaluate.py`` scores it
(``python -m vidcore.demo.evaluate``). ``train_svd.py`` / ``evaluate_svd.py`` do the same for the image-to-video
demo (``model_svd/``, Stable Video Diffusion's architecture: the first frame in, the shape's motion continued). The vocabulary is 4 colors (red, green, blue, yellow), 3 shapes
(circle, square, triangle) and 4 directions (left, right, up, down): prompts look like
``"a {color} {shape} moving {direction}"``; other words are accepted (spelled out letter by letter by
the tokenizer) but shift the result. ``model/README.md`` has the training
command, time and metrics. ``motions.py`` adds the diagonal motions ("moving up right" ...) and an 8-way angle
scorer; ``train_lora.py`` / ``evaluate_lora.py`` train and score a motion LoRA on the UNet3D, and
``lora_up_right/`` ships one (peft-layout safetensors; its README has the command, time and before/after figures).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError

MODEL_DIR = Path(__file__).resolve().parent / "model"
SVD_MODEL_DIR = Path(__file__).resolve().parent / "model_svd"  # image-to-video (train_svd.py, evaluate_svd.py)

# what the CLI uses for the demo model (its training resolution and a measured sampler setting)
DEFAULTS = dict(num_frames=8, height=32, width=32, num_inference_steps=25, guidance_scale=5.0, fps=4)


def demo_model_path() -> Path:
    """The shipped demo pipeline folder; raises ModelNotFoundError when it is not installed."""
    if not (MODEL_DIR / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"the built-in demo model is missing ({MODEL_DIR}/model_index.json not found). Reinstall vidcore, "
            f"retrain it with `python -m vidcore.demo.train --out {MODEL_DIR}`, or pass --model PATH_OR_REPO")
    return MODEL_DIR


def svd_demo_model_path() -> Path:
    """The shipped image-to-video demo pipeline (Stable Video Diffusion architecture); ModelNotFoundError when
    it is not installed."""
    if not (SVD_MODEL_DIR / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"the built-in image-to-video demo model is missing ({SVD_MODEL_DIR}/model_index.json not found). "
            f"Reinstall vidcore, retrain it with `python -m vidcore.demo.train_svd --out {SVD_MODEL_DIR}`, or pass "
            "--model PATH_OR_REPO")
    return SVD_MODEL_DIR


__all__ = ["DEFAULTS", "MODEL_DIR", "SVD_MODEL_DIR", "demo_model_path", "svd_demo_model_path"]
