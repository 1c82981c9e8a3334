"""The runtime packages never import diffusers (it is a test dependency only)."""

import subprocess
import sys
from pathlib import Path


def test_runtime_does_not_import_diffusers(tmp_path):
    code = ("import sys, vidcore, vidcore.kernels, vidcore.conversion, vidcore.loading, vidcore.cli, vidcore.schedulers, "
            "vidcore.pipelines.text_to_video, vidcore.pipelines.video_to_video, vidcore.io; "
            "vidcore.TextToVideoPipeline; "
            "assert 'diffusers' not in sys.modules, 'diffusers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)  # repo root off sys.path


def test_exports_are_lazy_and_resolve(tmp_path):
    """``import vidcore`` loads none of the exported modules; every name in ``vidcore.__all__`` then resolves to
    the object of that name (the motion-LoRA and single-file functions included) without importing diffusers."""
    code = ("import sys, vidcore; "
            "eager = [m for m in set(vidcore._LAZY.values()) if m in sys.modules]; "
            "assert not eager, eager; "
            "assert {'load_motion_lora', 'fuse_lora', 'unfuse_lora', 'fused_loras', 'MotionLoRA', "
            "'load_sd_single_file', 'save_original'} <= set(vidcore.__all__); "
            "bad = [n for n in vidcore.__all__ if getattr(getattr(vidcore, n), '__name__', n) != vidcore.ALIASES.get(n, n)]; "
            "assert not bad, bad; "
            "from vidcore.loading import lora; assert vidcore.fuse_lora is lora.fuse_lora; "
            "assert vidcore.load_motion_lora is lora.load_motion_lora is lora.load_lora is vidcore.load_lora; "
            "assert vidcore.MotionLoRA is vidcore.LoRA; "
            "assert 'diffusers' not in sys.modules, 'diffusers was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)  # repo root off sys.path


def _import_graph() -> dict[str, set[str]]:
    """vidcore module -> the vidcore modules it imports anywhere (top level or inside functions).

    The repository's kernels/ and conversion/ folders are vidcore.kernels and vidcore.conversion;
    ``from . import comm`` is an edge to the submodule ``comm``, not to its package."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = {}
    for package, folder in {"vidcore": "vidcore", "vidcore.kernels": "kernels", "vidcore.conversion": "conversion"}.items():
        for path in (root / folder).rglob("*.py"):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            files[".".join([package] + (parts[:-1] if parts[-1] == "__init__" else parts))] = path

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in files else known(target))
        graph[module] = {e for e in edges if e is not None and e != module}
    return graph


def test_no_import_cycles():
    """No two vidcore modules need each other, not even through a function-level import (e.g. loading and the
    motion adapter: the adapter's file reading lives in vidcore.loading, above the model). The one upward call
    by design (the model classes' from_pretrained, tests/test_layers.py UPWARD) is left out."""
    from test_layers import UPWARD

    graph = _import_graph()
    for module, target in UPWARD:
        graph[module].discard(target)
    assert {"vidcore.loading", "vidcore.loading.originals", "vidcore.models.motion", "vidcore.single_file"} <= set(graph)
    assert "vidcore.models.motion" in graph["vidcore.loading.originals"]
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_checkout_root_does_not_shadow_pypi_kernels():
    """``python -m vidcore`` from the repository root (the working directory goes on sys.path) must not
    make the repository's kernels/ folder the top-level `kernels` package that transformers imports."""
    root = Path(__file__).resolve().parents[1]
    code = ("import importlib.util, sys, vidcore; spec = importlib.util.find_spec('kernels'); "
            f"assert spec is None or not spec.origin.startswith({str(root / 'kernels')!r}), spec.origin")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_old_module_names_stay_as_aliases():
    """Renamed for what they are (nn/sampling.py holds up/down-sampling convs, not diffusion sampling; the LoRA
    classes and loader take spatial LoRAs too); the old import paths give the same objects."""
    from vidcore.loading import lora as loading_lora
    from vidcore.models import lora, motion_lora
    from vidcore.nn import resample, sampling
    from vidcore.pipelines import lora as pipeline_lora

    assert sampling.Downsample is resample.Downsample and sampling.Upsample is resample.Upsample
    assert motion_lora.MotionLoRA is motion_lora.LoRA is lora.LoRA
    assert motion_lora.fuse_lora is lora.fuse_lora and motion_lora.unfuse_lora is lora.unfuse_lora
    assert loading_lora.load_motion_lora is loading_lora.load_lora
    assert pipeline_lora.MotionLoRAMixin is pipeline_lora.LoRAMixin
