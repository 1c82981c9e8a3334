"""IP-Adapter image prompts: an image projection model plus decoupled cross-attention in a Stable Diffusion UNet.

A CLIP vision encoder turns the prompt image into an embedding (plain adapters: the projected image embedding,
``b d``; plus adapters: the penultimate layer's hidden states, ``b s d``). The adapter's image projection turns
that into a few context tokens (``b t c``, ``c`` = the UNet's cross-attention width):

* :class:`ImageProjection` (plain, ``ip-adapter_sd15`` / ``ip-adapter_sdxl``): linear to ``t x c``, LayerNorm;
* :class:`Resampler` (plus, ``ip-adapter-plus_sd15`` / ``ip-adapter-plus_sdxl_vit-h``): ``t`` learned query tokens
  refined by a few perceiver blocks (attention to the image features and to themselves, then an MLP).

Every cross-attention of the UNet then gets a second pair of key/value projections for those tokens; its output is
``attn(q, text) + scale * attn(q, image tokens)`` (:meth:`vidcore.nn.attention.Attention._forward_with_images`).
:class:`IPAdapter` holds one file's projection model and those pairs, keyed as in the file (``ip_adapter.{n}``,
n = 1, 3, 5, ... in diffusers' order of the cross-attentions: down blocks, up blocks, mid block).
:func:`attach` puts adapters into a :class:`~vidcore.models.unet2d.UNet2D` (registered as ``unet.ip_adapters``;
the attentions only reference their linears), :func:`detach` takes them out; a UNet without adapters runs exactly
as before. Several adapters can be attached at once, each with its own image prompt and scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..conversion.engine import load_into
from ..conversion.maps import original_ip_adapter
from ..errors import ConfigError, ConversionError
from ..nn.attention import Attention, ImagePromptContext
from ..nn.transformer import FeedForward

KINDS = ("plain", "plus")


@dataclass(frozen=True)
class IPAdapterConfig:
    """What one IP-Adapter file implies (read from its tensor shapes by ``from_state_dict``)."""

    kind: str  # "plain" | "plus"
    image_embed_dim: int  # width of the image encoder output it reads
    num_tokens: int  # image tokens it produces
    output_dim: int  # their width
    cross_attention_dim: int  # input width of the key/value projections (= output_dim)
    layer_ids: tuple[int, ...]  # the file's attention-layer numbers (1, 3, 5, ...)
    layer_widths: tuple[int, ...]  # the attention width of each
    hidden_dim: int = 0  # plus: width of the resampler
    depth: int = 0  # plus: resampler blocks
    heads: int = 0  # plus: attention heads (64 wide)
    ff_inner: int = 0  # plus: MLP hidden width

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"IP-Adapter kind must be one of {KINDS}, got {self.kind!r}")
        if self.output_dim != self.cross_attention_dim:
            raise ValueError(f"IP-Adapter image projection makes {self.output_dim}-wide tokens but its key/value "
                             f"projections read {self.cross_attention_dim}-wide ones")
        if len(self.layer_ids) != len(self.layer_widths) or not self.layer_ids:
            raise ValueError("IP-Adapter has no key/value projections (ip_adapter.* keys)")
        expected = tuple(range(1, 2 * len(self.layer_ids), 2))
        if self.layer_ids != expected:
            raise ValueError(f"IP-Adapter layer numbers {self.layer_ids[:6]}... are not 1, 3, 5, ... (the layout "
                             "diffusers and the original files use)")
        if self.kind == "plus" and not (self.hidden_dim and self.depth and self.heads and self.ff_inner):
            raise ValueError("a plus IP-Adapter needs hidden_dim, depth, heads and ff_inner")

    @property
    def uses_hidden_states(self) -> bool:
        """Whether it reads the image encoder's penultimate hidden states (plus) instead of its image embedding."""
        return self.kind == "plus"


class ImageProjection(nn.Module):
    """Plain IP-Adapter projection: image embedding ``n d`` -> ``n t c`` tokens (linear, LayerNorm)."""

    def __init__(self, cfg: IPAdapterConfig):
        super().__init__()
        self.num_tokens = cfg.num_tokens
        self.proj = nn.Linear(cfg.image_embed_dim, cfg.num_tokens * cfg.output_dim)
        self.norm = nn.LayerNorm(cfg.output_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(embeds.to(self.proj.weight.dtype))
        return self.norm(tokens.reshape(embeds.shape[0], self.num_tokens, -1))


class ResamplerBlock(nn.Module):
    """One perceiver block: the queries attend to [image features, queries] (both normed), then a GELU MLP;
    residual around each."""

    def __init__(self, cfg: IPAdapterConfig):
        super().__init__()
        dim = cfg.hidden_dim
        self.ln0 = nn.LayerNorm(dim)  # image features
        self.ln1 = nn.LayerNorm(dim)  # queries
        self.attn = Attention(dim, cfg.heads, original_ip_adapter.HEAD_DIM, out_bias=False)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation="gelu", inner=cfg.ff_inner, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        # features: n s c ; latents: n t c
        queries = self.ln1(latents)
        latents = latents + self.attn(queries, torch.cat([self.ln0(features), queries], dim=1))
        return latents + self.ff(self.ff_norm(latents))


class Resampler(nn.Module):
    """Plus IP-Adapter projection: image features ``n s d`` -> ``n t c`` through ``t`` learned queries."""

    def __init__(self, cfg: IPAdapterConfig):
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.hidden_dim))
        self.proj_in = nn.Linear(cfg.image_embed_dim, cfg.hidden_dim)
        self.layers = nn.ModuleList(ResamplerBlock(cfg) for _ in range(cfg.depth))
        self.proj_out = nn.Linear(cfg.hidden_dim, cfg.output_dim)
        self.norm_out = nn.LayerNorm(cfg.output_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(features.to(self.proj_in.weight.dtype))
        latents = self.latents.expand(features.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(x, latents)
        return self.norm_out(self.proj_out(latents))


class ImagePromptKV(nn.Module):
    """The image tokens' key and value projections for one cross-attention (no biases)."""

    def __init__(self, context_dim: int, width: int):
        super().__init__()
        self.to_k_ip = nn.Linear(context_dim, width, bias=False)
        self.to_v_ip = nn.Linear(context_dim, width, bias=False)


class IPAdapter(nn.Module):
    """One IP-Adapter file: ``image_proj`` (:class:`ImageProjection` or :class:`Resampler`) and ``ip_adapter``
    (``{"1": ImagePromptKV, "3": ..., ...}``). Its state dict uses the original file's names for the plain kind."""

    def __init__(self, config: IPAdapterConfig):
        super().__init__()
        config.validate()
        self.config = cfg = config
        self.image_proj = ImageProjection(cfg) if cfg.kind == "plain" else Resampler(cfg)
        self.ip_adapter = nn.ModuleDict(
            {str(n): ImagePromptKV(cfg.cross_attention_dim, w) for n, w in zip(cfg.layer_ids, cfg.layer_widths)}
        )

    @classmethod
    def from_state_dict(cls, state: dict, source: str = "state dict") -> "IPAdapter":
        """An original IP-Adapter state dict (prefixed keys, or the two nested groups of a ``.bin``) -> IPAdapter
        (float32 unless the tensors are another dtype); every key must be used, every shape must fit."""
        state = original_ip_adapter.flatten_groups(state)
        try:
            config = IPAdapterConfig(**original_ip_adapter.config_from_keys(state))
            with torch.device("meta"):
                module = cls(config)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: {err}") from err
        try:
            load_into(module, state, original_ip_adapter.IP_ADAPTER_MAP, assign=True)
        except ConversionError as err:
            raise ConversionError(f"{source} does not fit an IPAdapter: {err}", err.report) from err
        return module.eval()

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors under the original file's names (the same map run in reverse: ``to_kv`` fused again), as
        diffusers' ``load_ip_adapter`` reads them."""
        out, _ = original_ip_adapter.IP_ADAPTER_MAP.convert(self.state_dict(), direction="reverse")
        return out

    def project(self, embeds: torch.Tensor) -> torch.Tensor:
        """Image-encoder output per video, ``b k d`` (k images, plain) or ``b k s d`` (plus) -> ``b (k t) c``."""
        want = 4 if self.config.uses_hidden_states else 3
        if embeds.ndim != want:
            shape = "(batch, images, tokens, width)" if want == 4 else "(batch, images, width)"
            raise ValueError(f"a {self.config.kind} IP-Adapter takes image embeddings shaped {shape}, got "
                             f"{tuple(embeds.shape)}")
        b, k = embeds.shape[:2]
        tokens = self.image_proj(embeds.reshape(b * k, *embeds.shape[2:]))  # (b k) t c
        return tokens.reshape(b, k * tokens.shape[1], tokens.shape[2])


# ----------------------------------------------------------------------------- the UNet side


def cross_attention_layers(unet: nn.Module) -> list[tuple[str, Attention]]:
    """The UNet2D's text cross-attentions (``...attn2``) in diffusers' processor order: down, up, mid."""
    rank = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}
    found = [(name, m) for name, m in unet.named_modules()
             if name.split(".")[0] in rank and name.endswith(".attn2") and isinstance(m, Attention)]
    return sorted(found, key=lambda item: rank[item[0].split(".")[0]])


def check_fits(unet: nn.Module, adapter: IPAdapter, name: str = "IP-Adapter") -> None:
    """A one-line ValueError naming the mismatch when ``adapter`` was made for another kind of UNet."""
    layers = cross_attention_layers(unet)
    cfg = adapter.config
    context = layers[0][1].to_k.in_features if layers else None
    if context != cfg.cross_attention_dim:
        raise ValueError(f"{name} does not fit this UNet: its image tokens are {cfg.cross_attention_dim} wide but "
                         f"the UNet's cross_attention_dim is {context} (an adapter for another base model, e.g. SDXL "
                         "(2048) vs SD1.5 (768))")
    if len(layers) != len(cfg.layer_ids):
        raise ValueError(f"{name} does not fit this UNet: it has {len(cfg.layer_ids)} attention layers, the UNet "
                         f"has {len(layers)} cross-attentions (an adapter for another base model)")
    for (layer, attn), width in zip(layers, cfg.layer_widths):
        if attn.to_q.out_features != width:
            raise ValueError(f"{name} does not fit this UNet: its projections for {layer} are {width} wide, the "
                             f"attention is {attn.to_q.out_features} wide")


def attach(unet: nn.Module, adapters: list[IPAdapter]) -> None:
    """Put ``adapters`` into ``unet`` (replacing any attached before), every scale 1.0."""
    for i, adapter in enumerate(adapters):
        check_fits(unet, adapter, "IP-Adapter" if len(adapters) == 1 else f"IP-Adapter {i}")
    detach(unet)
    unet.ip_adapters = nn.ModuleList(adapters)
    for j, (_, attn) in enumerate(cross_attention_layers(unet)):
        kv = [a.ip_adapter[str(2 * j + 1)] for a in adapters]
        attn.image_branches = [(p.to_k_ip, p.to_v_ip) for p in kv]
        attn.image_scales = [1.0] * len(adapters)


def detach(unet: nn.Module) -> None:
    """Remove every IP-Adapter from ``unet`` (a no-op without one)."""
    if getattr(unet, "ip_adapters", None) is not None:
        del unet.ip_adapters
    for _, attn in cross_attention_layers(unet):
        attn.image_branches, attn.image_scales = [], []


def attached(unet: nn.Module) -> list[IPAdapter]:
    return list(getattr(unet, "ip_adapters", None) or [])


def _expand_scale(unet: nn.Module, scale) -> float | dict[str, float]:
    """A float, or diffusers' per-block dict (``{"down": {"block_2": [0.0, 1.0]}, "up": {"block_1": [0.0, 1.0,
    0.0]}, "mid": 0.0}``; blocks it does not name get 0) -> a float or ``{layer-name prefix: scale}``. A block
    without attentions is refused (diffusers ignores it silently)."""
    if not isinstance(scale, dict):
        return float(scale)
    unknown = sorted(set(scale) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"IP-Adapter scale dict keys must be 'down', 'mid' and 'up', got {unknown}")
    mid = scale.get("mid", 0.0)
    if isinstance(mid, list):
        if len(mid) != 1:
            raise ValueError(f"IP-Adapter scale: 'mid' takes one scale, got {len(mid)}")
        mid = mid[0]
    out = {"mid_block.attentions.0": float(mid)}
    for part in ("down", "up"):
        blocks = [(i, len(b.attentions)) for i, b in enumerate(getattr(unet, f"{part}_blocks")) if len(b.attentions)]
        value = scale.get(part, 0.0)
        if isinstance(value, dict):
            bad = sorted(set(value) - {f"block_{i}" for i, _ in blocks})
            if bad:
                raise ValueError(f"IP-Adapter scale: {part} has no attention block(s) {bad}; it has "
                                 f"{[f'block_{i}' for i, _ in blocks]}")
        for i, n in blocks:
            v = value.get(f"block_{i}", 0.0) if isinstance(value, dict) else value
            vs = list(v) if isinstance(v, list) else [v] * n
            vs = vs * n if len(vs) == 1 else vs
            if len(vs) != n:
                raise ValueError(f"IP-Adapter scale: {part}.block_{i} has {n} transformers, got {len(vs)} scales")
            out.update({f"{part}_blocks.{i}.attentions.{j}": float(s) for j, s in enumerate(vs)})
    return out


def set_scales(unet: nn.Module, scale) -> None:
    """diffusers' ``set_ip_adapter_scale``: one float / per-block dict for every adapter, or a list with one per
    adapter."""
    count = len(attached(unet))
    if count == 0:
        raise ValueError("no IP-Adapter is loaded (load_ip_adapter first)")
    scales = list(scale) if isinstance(scale, (list, tuple)) else [scale]
    if len(scales) == 1:
        scales = scales * count
    if len(scales) != count:
        raise ValueError(f"got {len(scales)} IP-Adapter scales for {count} loaded IP-Adapter(s)")
    expanded = [_expand_scale(unet, s) for s in scales]
    for name, attn in cross_attention_layers(unet):
        for i, s in enumerate(expanded):
            if isinstance(s, dict):
                attn.image_scales[i] = next((v for k, v in s.items() if name.startswith(k + ".")), 0.0)
            else:
                attn.image_scales[i] = s


def image_prompt_context(unet: nn.Module, text: torch.Tensor, image_embeds) -> ImagePromptContext:
    """Text tokens plus the attached adapters' projections of ``image_embeds`` (a list with one image-encoder
    output per adapter, as diffusers' ``added_cond_kwargs["image_embeds"]``)."""
    adapters = attached(unet)
    if not adapters:
        raise ValueError("image_embeds were given but no IP-Adapter is loaded (load_ip_adapter)")
    if isinstance(image_embeds, torch.Tensor):
        image_embeds = [image_embeds]
    if len(image_embeds) != len(adapters):
        raise ValueError(f"got {len(image_embeds)} image embeddings for {len(adapters)} loaded IP-Adapter(s)")
    return ImagePromptContext(text, tuple(a.project(e) for a, e in zip(adapters, image_embeds)))
