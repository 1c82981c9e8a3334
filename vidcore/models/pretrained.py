"""``Model.from_pretrained`` / ``Model.from_single_file`` on the model classes, the way diffusers users call them.

Loading sits above the models (it builds them from folders, hub ids and files), so these two classmethods reach up
to :mod:`vidcore.loading.models` when they are called: the one import against the layer order, listed by name in
tests/test_layers.py. Everything they do is :func:`vidcore.load_model` plus a check of the class.
"""

from __future__ import annotations

import os


class PretrainedMixin:
    """``from_pretrained`` and ``from_single_file`` for a model class :func:`vidcore.load_model` can build."""

    single_file_component: str | None = None  # load_model's ``component`` for this class's original files

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, subfolder: str | None = None, torch_dtype=None,
                        variant: str | None = None, revision: str | None = None, token: str | None = None):
        """A diffusers folder or hub repo (``subfolder="unet"``), or a vidcore native file, holding this class."""
        from ..loading.models import load_model  # loading builds models: called, not imported, from here

        return cls._checked(load_model(path_or_repo, subfolder=subfolder, torch_dtype=torch_dtype, variant=variant,
                                       revision=revision, token=token), path_or_repo)

    @classmethod
    def from_single_file(cls, path: str | os.PathLike, config_from=None, torch_dtype=None,
                         revision: str | None = None, token: str | None = None):
        """An original-format file of this class (e.g. an AnimateDiff ``mm_sd_v15_v2.ckpt`` for MotionAdapter);
        ``config_from`` gives or overrides the config where the file's keys do not tell it."""
        from ..loading.models import load_model

        return cls._checked(load_model(path, torch_dtype=torch_dtype, revision=revision, token=token,
                                       config_from=config_from, component=cls.single_file_component), path)

    @classmethod
    def _checked(cls, model, source):
        if not isinstance(model, cls):
            raise TypeError(f"{os.fspath(source)} holds a {type(model).__name__}; {cls.__name__}.from_pretrained / "
                            f"from_single_file load a {cls.__name__} (vidcore.load_model loads any model)")
        return model


class UNetMotionPretrainedMixin:
    """``UNetMotion.from_pretrained``: a saved diffusers ``UNetMotionModel`` folder (an AnimateDiff pipeline's
    ``unet/``: SD UNet and motion modules in one file), read by :func:`vidcore.loading.models.load_unet_motion`."""

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, subfolder: str | None = None, torch_dtype=None,
                        variant: str | None = None, revision: str | None = None, token: str | None = None):
        from .. import hub  # the loading layer, called from here as above
        from ..loading.models import load_unet_motion

        folder = hub.resolve(path_or_repo, subfolder=subfolder, revision=revision, token=token)
        return load_unet_motion(folder, torch_dtype=torch_dtype, variant=variant)
