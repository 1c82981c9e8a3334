"""The one ``from_pretrained`` / ``from_single_file`` behind every pipeline.

A pipeline class declares what it is made of; this module does folders, hub ids, variants, revisions, tokens,
dtypes and single files for all of them:

* ``loaders``: component name -> folder loader ``(folder, torch_dtype, variant)`` (:mod:`vidcore.loading.loaders`),
  in loading order; every component read from a pipeline folder has one;
* ``arguments``: component name -> argument loader ``(value, torch_dtype, variant, token)`` for components a user
  may pass as a path, hub repo id or file instead of a module (AnimateDiff's ``motion_adapter=``, ``controlnet=``);
* ``accepts``: components taken as arguments but never read from a folder (AnimateDiff's IP-Adapter image encoder);
* ``single_file``: a :class:`SingleFile` when the pipeline loads from an original single file;
* hooks with defaults on :class:`~vidcore.pipelines.base.VideoPipeline`: ``needs(name, modules)`` (is a declared
  component needed, given those loaded so far), ``missing_component(name, where, single_file)`` (the error when it
  is needed and absent) and ``index_options(index)`` (constructor options read from ``model_index.json``).

Components passed as keyword arguments replace the stored ones and are neither downloaded nor read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import hub
from ..errors import ModelNotFoundError
from .fetch import fetch


@dataclass(frozen=True)
class LoadOptions:
    torch_dtype: Any = None
    variant: str | None = None
    revision: str | None = None
    token: Any = None


@dataclass(frozen=True)
class SingleFile:
    """How a pipeline reads an original single file. ``read(path, config_from=root, torch_dtype=, revision=,
    token=, components=names)`` returns ``{name: module}`` for the asked ``components`` the file holds (a component
    the file may lack, such as SVD's image encoder, is then read whole from ``config_from``). ``config_from`` is a
    pipeline folder or hub repo id giving the configs and the other components; from the hub only
    ``config_patterns`` are fetched. ``kind`` names what ``config_from`` must be in errors."""

    read: Callable[..., dict]
    components: tuple[str, ...]
    config_patterns: tuple[str, ...]
    kind: str
    default_config_from: str | None = None


def declared(cls) -> tuple[str, ...]:
    """Every component ``cls.from_pretrained`` takes as a keyword argument."""
    names = [*cls.loaders, *cls.arguments, *cls.accepts]
    return tuple(dict.fromkeys(names))


def _given(cls, components: Mapping, method: str, options: LoadOptions) -> dict:
    """The components passed by the user, argument loaders applied (``None`` for those: not passed)."""
    unknown = sorted(set(components) - set(declared(cls)))
    if unknown:
        raise TypeError(f"unexpected arguments for {cls.__name__}.{method}: {unknown}")
    out = {}
    for name, value in components.items():
        if name in cls.arguments:
            if value is None:
                continue
            value = cls.arguments[name](value, options.torch_dtype, options.variant, options.token)
        out[name] = value
    return out


def _load_declared(cls, modules: dict, root: Path, index: Mapping, options: LoadOptions, where: str,
                   single_file: bool) -> dict:
    """``modules`` plus every declared component not passed that ``cls.needs``, read from ``root``'s folders."""
    for name, loader in cls.loaders.items():
        if name in modules or not cls.needs(name, modules):
            continue
        listed = isinstance(index.get(name), list) and index[name][-1] is not None
        if not (root / name).is_dir() or not (listed or single_file):
            raise cls.missing_component(name, where, single_file)
        modules[name] = loader(root / name, options.torch_dtype, options.variant)
    return modules


def load_pipeline(cls, path_or_repo, torch_dtype=None, variant: str | None = None, revision: str | None = None,
                  token=None, **components):
    """``cls.from_pretrained``: every declared component from a diffusers-layout folder (``model_index.json``) or hub
    repo id (only what is read is downloaded), except those passed as keyword arguments."""
    options = LoadOptions(hub.parse_dtype(torch_dtype), variant, revision, token)
    modules = _given(cls, components, "from_pretrained", options)
    wanted = [n for n in cls.loaders if n not in modules]
    root = fetch(path_or_repo, wanted, variant, revision, token)
    if not (root / "model_index.json").is_file():
        raise ModelNotFoundError(f"'{os.fspath(path_or_repo)}' is not a pipeline folder: model_index.json is missing "
                                 f"(looked in {root})")
    index = hub.load_config(root, "model_index.json")
    modules = _load_declared(cls, modules, root, index, options, f"'{os.fspath(path_or_repo)}'", single_file=False)
    return cls(**modules, **cls.index_options(index))


def load_single_file(cls, path, config_from=None, torch_dtype=None, variant: str | None = None,
                     revision: str | None = None, token=None, **components):
    """``cls.from_single_file``: the components of ``cls.single_file`` from the original file ``path`` (read once),
    the others from ``config_from``, except those passed as keyword arguments. ``variant`` applies to what is read
    from folders (``config_from``'s weights, ``motion_adapter=``)."""
    layout: SingleFile | None = cls.single_file
    if layout is None:
        raise TypeError(f"{cls.__name__} has no single-file layout; use {cls.__name__}.from_pretrained")
    options = LoadOptions(hub.parse_dtype(torch_dtype), variant, revision, token)
    modules = _given(cls, components, "from_single_file", options)
    config_from = layout.default_config_from if config_from is None else config_from
    if config_from is None:
        raise TypeError(f"{cls.__name__}.from_single_file needs config_from= ({layout.kind})")
    root = hub.resolve(config_from, allow_patterns=list(layout.config_patterns), revision=revision, token=token)
    if not (root / "model_index.json").is_file():
        folders = ", ".join(f"{n}/" for n in cls.loaders)
        raise ModelNotFoundError(f"config_from={os.fspath(config_from)!r} must be {layout.kind} (model_index.json, "
                                 f"{folders}); looked in {root}")
    where = f"{root} (config_from)"
    from_file = [c for c in layout.components if c not in modules]
    for name in from_file:
        if not (root / name).is_dir():
            raise cls.missing_component(name, where, single_file=True)
    if from_file:
        # root is a local folder now: the configs are read from it, nothing more is fetched
        modules.update(layout.read(path, config_from=root, torch_dtype=options.torch_dtype, revision=revision,
                                   token=token, components=tuple(from_file)))
    lacking = [c for c in from_file if c not in modules]
    if lacking:  # not in the file: taken whole from config_from (its weights too)
        root = hub.resolve(config_from, allow_patterns=[f"{c}/*" for c in lacking], revision=revision, token=token)
    index = hub.load_config(root, "model_index.json")
    modules = _load_declared(cls, modules, root, index, options, where, single_file=True)
    return cls(**modules, **cls.index_options(index))
