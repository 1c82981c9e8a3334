"""Hub downloads limited to what is loaded: a pipeline repo's model_index.json, the configs and tokenizer files, and
the safetensors weights of the components that are read (SD repos also hold multi-GB ``.ckpt`` / ``.bin`` / non-EMA
files that never are). A component whose weights the patterns miss (no such variant, or only pickled weights) is
fetched again more widely. A local path is used as it is."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

from .. import hub
from ..errors import ModelNotFoundError

WEIGHT_STEMS = ("diffusion_pytorch_model", "model")  # diffusers models, transformers models


def download_patterns(components: Sequence[str], variant: str | None) -> list[str]:
    """``allow_patterns`` for the configs, tokenizer files and safetensors weights of ``components`` (``""``: the
    repo root, a model repo)."""
    out = ["model_index.json", "config.json"]
    for c in components:
        prefix = f"{c}/" if c else ""
        out += [f"{prefix}*.json", f"{prefix}*.txt"]
        if variant:
            out += [f"{prefix}{s}.{variant}.safetensors" for s in WEIGHT_STEMS]
            out += [f"{prefix}{s}.{variant}-*.safetensors" for s in WEIGHT_STEMS]
        else:
            out += [f"{prefix}{s}.safetensors" for s in WEIGHT_STEMS] + [f"{prefix}{s}-*-of-*.safetensors" for s in WEIGHT_STEMS]
    return out


def weights_present(folder: Path, variant: str | None) -> bool:
    """Whether ``folder`` holds weights to load (``variant`` ones, or plain ones to fall back to)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's warning comes when the weights are read
        for stem in WEIGHT_STEMS:
            try:
                hub.weight_files(folder, variant=variant, stem=stem)
                return True
            except ModelNotFoundError:
                continue
    return False


def fetch(path_or_repo, components: Sequence[str], variant: str | None = None, revision: str | None = None,
          token=None) -> Path:
    """Local path, or the hub snapshot holding just what ``components`` need: their variant safetensors, else their
    plain safetensors, else all their files (pickled weights)."""
    root = hub.resolve(path_or_repo, allow_patterns=download_patterns(components, variant), revision=revision,
                       token=token)
    if Path(os.fspath(path_or_repo)).expanduser().exists():
        return root

    def lacking(names):
        return [c for c in names if ((root / c) / "config.json").is_file() and not weights_present(root / c, variant)]

    missing = lacking(components)
    if variant and missing:
        root = hub.resolve(path_or_repo, allow_patterns=download_patterns(missing, None), revision=revision,
                           token=token)
        missing = lacking(missing)
    if missing:
        root = hub.resolve(path_or_repo, allow_patterns=[f"{c}/*" if c else "*" for c in missing], revision=revision,
                           token=token)
    return root
