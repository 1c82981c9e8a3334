"""The runtime packages never import diffusers (it is a test dependency only)."""

import subprocess
import sys


def test_runtime_does_not_import_diffusers():
    code = ("import sys, vidcore, vidcore.kernels, vidcore.conversion, vidcore.loading, vidcore.cli, vidcore.schedulers, "
            "vidcore.pipelines.text_to_video, vidcore.pipelines.video_to_video, vidcore.io; "
            "vidcore.TextToVideoPipeline; "
            "assert 'diffusers' not in sys.modules, 'diffusers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_exports_are_lazy_and_resolve():
    """``import vidcore`` loads none of the exported modules; every name in ``vidcore.__all__`` then resolves to
    the object of that name (the motion-LoRA and single-file functions included) without importing diffusers."""
    code = ("import sys, vidcore; "
            "eager = [m for m in set(vidcore._LAZY.values()) if m in sys.modules]; "
            "assert not eager, eager; "
            "assert {'load_motion_lora', 'fuse_lora', 'unfuse_lora', 'fused_loras', 'MotionLoRA', "
            "'load_sd_single_file', 'save_original'} <= set(vidcore.__all__); "
            "bad = [n for n in vidcore.__all__ if getattr(getattr(vidcore, n), '__name__', n) != n]; "
            "assert not bad, bad; "
            "from vidcore.models import motion_lora; assert vidcore.fuse_lora is motion_lora.fuse_lora; "
            "assert 'diffusers' not in sys.modules, 'diffusers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
