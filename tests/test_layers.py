"""The import structure: layers import only downwards, and no module reaches into another's private names.

Read from the source with ``ast`` (nothing is imported), so a violation is reported with its file and line.
The layers, lowest first (a module may import its own package and any lower layer, nothing at its level or
above):

    errors, random, kernels        plain helpers and the fused kernels
    nn, conversion                 building blocks; checkpoint key maps
    models, schedulers             modules with configs; noise schedules
    loading                        folders, hub ids, variants, single files -> models
    sampling                       the loop, guidance and the diffusion-time features
    parallel                       wrappers that split a prediction over processes
    io, controls                   video files and control images (user-facing helpers)
    pipelines                      the pipelines users call
    training                       LoRA layers, the fine-tuning loop and its data
    tools                          model-making tools (random models, the CLIP vocabulary)
    demo                           the tiny demo model the project trains
    cli                            the command line (``__main__`` runs it)

``vidcore/__init__.py`` only names what it re-exports lazily (strings), so it is not a layer. One import goes up,
by design, and is listed in UPWARD: the model classes' ``from_pretrained`` / ``from_single_file``
(``vidcore/models/pretrained.py``) call ``vidcore.loading.models.load_model`` inside the classmethods, and the
schedulers' ``from_pretrained`` (``vidcore/schedulers/common.py``) reads its file through ``vidcore.hub`` the same way.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# repository folder -> import name
PACKAGES = {"vidcore": "vidcore", "kernels": "vidcore.kernels", "conversion": "vidcore.conversion"}

LAYERS = [
    {"errors", "random", "kernels"},
    {"nn", "conversion"},
    {"models", "schedulers"},
    {"loading"},
    {"sampling"},
    {"parallel"},
    {"io", "controls"},
    {"pipelines"},
    {"training"},
    {"tools"},
    {"demo"},
    {"cli"},
    {"__main__"},
]
# (importing module, imported module): the imports against the order that are the design, not a leak
UPWARD = {("vidcore.models.pretrained", "vidcore.loading.models"),
          ("vidcore.models.pretrained", "vidcore.hub"),  # UNetMotion.from_pretrained: a folder or hub id's subfolder
          # Scheduler.from_pretrained (diffusers' DDIMScheduler.from_pretrained(repo, subfolder="scheduler")) reads
          # scheduler_config.json from a folder or hub id through vidcore.hub, imported inside the classmethod
          ("vidcore.schedulers.common", "vidcore.hub")}
# vidcore.hub and vidcore.single_file are the loading package's older homes, part of that layer
PART = {"hub": "loading", "single_file": "loading"}
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def module_files() -> dict[str, Path]:
    """Import name -> file, for every module of vidcore (the top-level kernels/ and conversion/ folders
    under their shipped names)."""
    out = {}
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = path
    return out


MODULES = module_files()


def imports(module: str, path: Path):
    """(line, imported module, imported names) for each vidcore import in ``path``; ``from pkg import mod``
    counts as importing ``pkg.mod``."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("vidcore"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:
                    yield node.lineno, sub, []
                else:
                    yield node.lineno, target, [alias.name]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vidcore"):
                    yield node.lineno, alias.name, []


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return PART.get(parts[1], parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer():
    missing = sorted({layer_of(m) for m in MODULES if layer_of(m) is not None and layer_of(m) not in RANK})
    assert not missing, f"add these vidcore parts to LAYERS in tests/test_layers.py: {missing}"


def test_layers_import_only_downwards():
    bad = []
    for module, path in MODULES.items():
        own = layer_of(module)
        if own is None:
            continue
        for line, target, _ in imports(module, path):
            other = layer_of(target)
            if other is None or other == own:
                continue
            if RANK[other] >= RANK[own] and (module, target) not in UPWARD:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {target} ({other})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_sampling_and_parallel_never_import_pipelines():
    # the rule the layers encode, named on its own because it is the one the design depends on
    for module, path in MODULES.items():
        if layer_of(module) in ("sampling", "parallel"):
            for line, target, _ in imports(module, path):
                assert layer_of(target) != "pipelines", f"{path.relative_to(ROOT)}:{line} imports {target}"


def test_no_module_imports_another_modules_private_names():
    bad = []
    for module, path in MODULES.items():
        for line, target, names in imports(module, path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != module:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {private} from {target}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_the_checker_sees_violations(tmp_path):
    # the parser resolves relative imports and `from pkg import module` the way Python does
    path = tmp_path / "x.py"
    path.write_text("from ..pipelines.text import clip_embed\nfrom .. import hub\nfrom .loop import _private\n")
    found = list(imports("vidcore.sampling.x", path))
    assert found == [(1, "vidcore.pipelines.text", ["clip_embed"]), (2, "vidcore.hub", []),
                     (3, "vidcore.sampling.loop", ["_private"])]
