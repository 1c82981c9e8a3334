"""IP-Adapter image prompts for the Stable Diffusion pipelines (AnimateDiff SD1.5 and SDXL, Text2Video-Zero),
with diffusers' names.

``pipe.load_ip_adapter("h94/IP-Adapter", subfolder="models", weight_name="ip-adapter_sd15.safetensors")`` reads
the original file (safetensors, or a ``.bin`` through ``torch.load(weights_only=True)``), puts its projection and
key/value layers into the UNet (:mod:`vidcore.models.ip_adapter`) and, when the pipeline has none yet, loads the
CLIP vision encoder from ``{subfolder}/image_encoder`` (transformers' ``CLIPVisionModelWithProjection``) and makes
a ``CLIPImageProcessor`` for its input size. ``pipe(..., ip_adapter_image=img)`` then conditions on the image
(``ip_adapter_image_embeds=`` takes precomputed embeddings instead); ``set_ip_adapter_scale`` and
``unload_ip_adapter`` as in diffusers.

Embeddings follow diffusers: plain adapters read the encoder's image embedding, with zeros as the unconditional
one; plus adapters read the penultimate hidden states, the unconditional ones those of an all-zero image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from .. import hub
from ..errors import ModelNotFoundError
from ..loading.loaders import load_image_encoder
from ..loading.originals import load_ip_adapter_file
from ..models import ip_adapter as ipa
from ..models.ip_adapter import IPAdapter


def split_location(spec: str | os.PathLike) -> tuple[str, str | None, str | None]:
    """A CLI location -> (repo or folder, subfolder, weight name): a local file, or ``owner/repo/sub/file`` on the
    hub (``h94/IP-Adapter/models/ip-adapter_sd15.safetensors``)."""
    text = os.fspath(spec)
    if Path(text).expanduser().exists():
        return text, None, None
    parts = text.strip("/").split("/")
    if len(parts) < 3:
        raise ModelNotFoundError(f"IP-Adapter '{text}' is neither a local file nor a hub path such as "
                                 "h94/IP-Adapter/models/ip-adapter_sd15.safetensors")
    return "/".join(parts[:2]), "/".join(parts[2:-1]) or None, parts[-1]


def _as_list(value, n: int, name: str) -> list:
    values = value if isinstance(value, list) else [value]
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} IP-Adapter weight file(s)")
    return values


class IPAdapterMixin:
    """``load_ip_adapter`` / ``set_ip_adapter_scale`` / ``unload_ip_adapter`` and the image-embedding helpers.

    The pipeline's ``unet`` is a UNet2D or a UNetMotion (whose ``.unet`` gets the adapters). ``image_encoder`` and
    ``feature_extractor`` are optional attributes (None until an adapter brings them, or passed in)."""

    image_encoder = None
    feature_extractor = None

    def _modules(self) -> dict[str, torch.nn.Module]:
        modules = super()._modules()
        if isinstance(self.image_encoder, torch.nn.Module):
            modules["image_encoder"] = self.image_encoder
        return modules

    def _ip_unet(self) -> torch.nn.Module:
        return getattr(self.unet, "unet", self.unet)

    @property
    def ip_adapters(self) -> list[IPAdapter]:
        """The loaded adapters (empty when none is)."""
        return ipa.attached(self._ip_unet())

    # -- loading --------------------------------------------------------------------------------
    def load_ip_adapter(self, pretrained_model_name_or_path_or_dict, subfolder: str | list[str] | None = None,
                        weight_name: str | list[str] | None = None, image_encoder_folder: str | None = "image_encoder",
                        revision: str | None = None, token: str | None = None) -> None:
        """Load one or more original IP-Adapter files into the UNet (replacing adapters loaded before).

        ``pretrained_model_name_or_path_or_dict``: a hub repo id or local folder (with ``subfolder`` and
        ``weight_name``), a weight file, or an original state dict; lists load several adapters. The image encoder
        is loaded when the pipeline has none: from ``{subfolder}/{image_encoder_folder}``, or from
        ``image_encoder_folder`` itself when it contains a ``/`` (both relative to the repo or folder); ``None``
        skips it (then pass ``ip_adapter_image_embeds``). A file that does not fit the UNet raises a ValueError
        naming the mismatch.
        """
        names = weight_name if isinstance(weight_name, list) else [weight_name]
        sources = pretrained_model_name_or_path_or_dict
        sources = sources if isinstance(sources, list) else [sources]
        n = max(len(names), len(sources))
        sources, names = _as_list(sources, n, "pretrained_model_name_or_path_or_dict"), _as_list(names, n, "weight_name")
        subfolders = _as_list(subfolder, n, "subfolder")
        device, dtype = self.device, self.dtype
        adapters, encoder_at = [], None
        for source, sub, name in zip(sources, subfolders, names):
            if isinstance(source, Mapping):
                adapter = IPAdapter.from_state_dict(dict(source))
                root = None
            else:
                root, file = self._ip_adapter_file(source, sub, name, image_encoder_folder, revision, token)
                adapter = load_ip_adapter_file(file)
                if Path(os.fspath(source)).expanduser().is_file():
                    sub = None  # a weight file given directly: the encoder folder is next to it
            ipa.check_fits(self._ip_unet(), adapter, "IP-Adapter state dict" if root is None else f"IP-Adapter {file}")
            adapters.append(adapter.to(device=device, dtype=dtype))
            if self.image_encoder is None and image_encoder_folder is not None and encoder_at is None:
                if root is None:
                    raise ValueError("the image encoder cannot be loaded for an IP-Adapter given as a state dict: pass "
                                     "image_encoder_folder=None (and ip_adapter_image_embeds), or set pipe.image_encoder")
                encoder_at = (root, sub)
        # everything was read and fits: only now is the pipeline changed
        if encoder_at is not None:
            self.image_encoder = self._load_image_encoder(*encoder_at, image_encoder_folder, dtype).to(device)
        ipa.attach(self._ip_unet(), adapters)
        if self.feature_extractor is None:
            size = self.image_encoder.config.image_size if self.image_encoder is not None else 224
            self.feature_extractor = _image_processor(size)

    def _ip_adapter_file(self, source, sub, name, encoder_folder, revision, token) -> tuple[Path, Path]:
        """(folder the image-encoder path is relative to, the weight file)."""
        local = Path(os.fspath(source)).expanduser()
        if local.is_file():
            return local.parent, local
        if name is None:
            raise ValueError("load_ip_adapter: give weight_name (e.g. 'ip-adapter_sd15.safetensors') for a folder or "
                             "hub repo")
        rel = f"{sub.strip('/')}/{name}" if sub else name
        patterns = [rel]
        if encoder_folder is not None and self.image_encoder is None:
            enc = _encoder_path(sub, encoder_folder)
            patterns += [f"{enc}/*.json", f"{enc}/*.safetensors"]
        root = hub.resolve(source, allow_patterns=patterns, revision=revision, token=token)
        file = root / rel
        if not file.is_file():
            raise ModelNotFoundError(f"IP-Adapter weight file '{rel}' is missing in {root}")
        return root, file

    @staticmethod
    def _load_image_encoder(root: Path, sub, encoder_folder: str, dtype):
        folder = root / _encoder_path(sub, encoder_folder)
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"IP-Adapter image encoder folder {folder} is missing (image_encoder_folder="
                                     f"{encoder_folder!r}); pass image_encoder_folder=None to skip it")
        return load_image_encoder(folder, dtype)

    def set_ip_adapter_scale(self, scale) -> None:
        """A float, diffusers' per-block dict (SD1.5: ``{"up": {"block_1": [0.0, 1.0, 0.0]}}``; blocks not named get
        0), or a list with one of those per loaded adapter. Difference from diffusers: a block without attentions
        (SD1.5's ``up.block_0``) is refused instead of ignored."""
        ipa.set_scales(self._ip_unet(), scale)

    def unload_ip_adapter(self) -> None:
        """Remove the adapters, the image encoder and the image processor; the UNet is as before loading."""
        ipa.detach(self._ip_unet())
        self.image_encoder = None
        self.feature_extractor = None

    # -- embeddings -----------------------------------------------------------------------------
    def encode_image(self, image, device, num_images_per_prompt: int, output_hidden_states: bool = False):
        """(image features, unconditional features) from the image encoder, each repeated ``num_images_per_prompt``
        times: the image embedding and zeros, or (``output_hidden_states``) the penultimate hidden states of the
        image and of an all-zero image."""
        if self.image_encoder is None:
            raise ValueError("ip_adapter_image needs an image encoder: load_ip_adapter(..., image_encoder_folder=...) "
                             "or pass ip_adapter_image_embeds")
        encoder = self._run_on_device("image_encoder") if self._offload_device is not None else self.image_encoder
        dtype = next(encoder.parameters()).dtype
        if not isinstance(image, torch.Tensor):
            image = self.feature_extractor(image, return_tensors="pt").pixel_values
        image = image.to(device=device, dtype=dtype)
        if output_hidden_states:
            cond = encoder(image, output_hidden_states=True).hidden_states[-2]
            uncond = encoder(torch.zeros_like(image), output_hidden_states=True).hidden_states[-2]
            return cond.repeat_interleave(num_images_per_prompt, 0), uncond.repeat_interleave(num_images_per_prompt, 0)
        cond = encoder(image).image_embeds.repeat_interleave(num_images_per_prompt, 0)
        return cond, torch.zeros_like(cond)

    def prepare_ip_adapter_image_embeds(self, ip_adapter_image, ip_adapter_image_embeds, device,
                                        num_images_per_prompt: int, do_classifier_free_guidance: bool) -> list:
        """One tensor per adapter for the UNet: ``(batch, images, ...)`` with the unconditional half first under
        guidance. ``ip_adapter_image``: one image (or list of images) per adapter; ``ip_adapter_image_embeds``:
        precomputed, each already holding [negative, positive] halves when guidance is on (as diffusers)."""
        adapters = self.ip_adapters
        if not adapters:
            raise ValueError("ip_adapter_image / ip_adapter_image_embeds need an IP-Adapter: call load_ip_adapter")
        cond, uncond = [], []
        if ip_adapter_image_embeds is None:
            images = ip_adapter_image if isinstance(ip_adapter_image, list) else [ip_adapter_image]
            if len(images) != len(adapters):
                raise ValueError(f"ip_adapter_image must have one entry per IP-Adapter: got {len(images)} for "
                                 f"{len(adapters)} adapter(s)")
            for image, adapter in zip(images, adapters):
                c, u = self.encode_image(image, device, 1, adapter.config.uses_hidden_states)
                cond.append(c[None])
                uncond.append(u[None])
        else:
            if len(ip_adapter_image_embeds) != len(adapters):
                raise ValueError(f"ip_adapter_image_embeds must have one tensor per IP-Adapter: got "
                                 f"{len(ip_adapter_image_embeds)} for {len(adapters)} adapter(s)")
            for embeds in ip_adapter_image_embeds:
                if do_classifier_free_guidance:
                    u, embeds = embeds.chunk(2)
                    uncond.append(u)
                cond.append(embeds)
        out = []
        for i, c in enumerate(cond):
            c = torch.cat([c] * num_images_per_prompt)
            if do_classifier_free_guidance:
                c = torch.cat([torch.cat([uncond[i]] * num_images_per_prompt), c])
            out.append(c.to(device))
        return out


def check_ip_adapter_inputs(ip_adapter_image, ip_adapter_image_embeds) -> None:
    """diffusers' checks: not both; embeddings are a list of 3-D or 4-D tensors."""
    if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
        raise ValueError("pass at most one of ip_adapter_image and ip_adapter_image_embeds")
    if ip_adapter_image_embeds is not None:
        if not isinstance(ip_adapter_image_embeds, list):
            raise ValueError(f"ip_adapter_image_embeds must be a list of tensors (one per IP-Adapter), got "
                             f"{type(ip_adapter_image_embeds).__name__}")
        if any(not isinstance(e, torch.Tensor) or e.ndim not in (3, 4) for e in ip_adapter_image_embeds):
            raise ValueError("ip_adapter_image_embeds must hold 3-D (batch, images, width) or 4-D (batch, images, "
                             "tokens, width) tensors")


def _encoder_path(sub: str | None, encoder_folder: str) -> str:
    """diffusers' rule: a bare folder name is inside ``subfolder``, a path with a '/' is from the repo root."""
    if "/" in encoder_folder or not sub:
        return encoder_folder.strip("/")
    return f"{sub.strip('/')}/{encoder_folder}"


def _image_processor(size: int):
    """``CLIPImageProcessor(size=size, crop_size=size)`` as diffusers makes it (the PIL class without torchvision)."""
    import importlib.util

    import transformers

    name = "CLIPImageProcessor" if importlib.util.find_spec("torchvision") else "CLIPImageProcessorPil"
    cls = getattr(transformers, name, None) or transformers.CLIPImageProcessor
    return cls(size=size, crop_size=size)
