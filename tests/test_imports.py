"""The runtime packages never import diffusers (it is a test dependency only)."""

import subprocess
import sys


def test_runtime_does_not_import_diffusers():
    code = ("import sys, vidcore, kernels, conversion, vidcore.loading, vidcore.cli, vidcore.schedulers, "
            "vidcore.pipelines.text_to_video, vidcore.pipelines.video_to_video, vidcore.io; "
            "vidcore.TextToVideoPipeline; "
            "assert 'diffusers' not in sys.modules, 'diffusers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
