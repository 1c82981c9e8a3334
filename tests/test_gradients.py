"""Training parity with diffusers: gradients, and gradient checkpointing.

Each family builds diffusers' model from a tiny random config, loads the same weights into vidcore's module
through the diffusers key map, and runs a float32 training step in ``train()`` mode (dropout is 0 in these
configs, and set to 0 where diffusers hard-codes it: ModelScope's temporal convolutions) on the same inputs: loss = mean(output * fixed random weights), backward. The loss, the gradient with
respect to the input latents and every parameter's gradient must agree; diffusers' gradients are renamed with the
same key map that renames its weights, so each vidcore parameter is compared with its own source. A parameter
vidcore never uses (SVD's single-token cross-attention queries and keys: attention over one key ignores them)
compares as a zero gradient, which diffusers' must then be within the tolerance.

Gradient checkpointing (``enable_gradient_checkpointing``) must keep far fewer activations for backward, give the
plain run's gradients, leave outputs under ``torch.no_grad`` unchanged, survive ``train()`` / ``eval()``, and switch
off again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch

import tiny
from tiny_controlnet import tiny_controlnet_config, tiny_sparse_config
from vidcore.conversion.maps.diffusers_motion import MOTION_ADAPTER_MAP
from vidcore.conversion.maps.diffusers_unet2d import unet2d_map
from vidcore.conversion.maps.diffusers_unet_motion import split_state_dict
from vidcore.loading.architectures import BY_DIFFUSERS, build, fill
from vidcore.models.motion import UNetMotion

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5
# parameter gradients: error relative to max(|g_ref| of that parameter, FLOOR x the norm of all of diffusers'
# gradients), so a parameter whose gradient is (near) zero is judged against the model's gradient scale
FLOOR = 1e-3


class Case(NamedTuple):
    """One family: diffusers' module, vidcore's, the input latents, each side's output for given latents, and
    diffusers' gradients {diffusers name: grad} -> {vidcore parameter name: grad}."""

    ref: torch.nn.Module
    ours: torch.nn.Module
    x: torch.Tensor
    run_ref: Callable[[torch.Tensor], torch.Tensor]
    run_ours: Callable[[torch.Tensor], torch.Tensor]
    rename: Callable[[dict], dict]


def native(ref: torch.nn.Module) -> torch.nn.Module:
    """vidcore's module for a diffusers model, filled with copies of its weights through the architecture's key
    map (copies: the two models share no storage)."""
    arch = BY_DIFFUSERS[type(ref).__name__]
    config = dict(ref.config)
    ours = build(arch, config)
    fill(ours, {k: v.clone() for k, v in ref.state_dict().items()}, arch.keymap(config), [])
    return ours


def keymap_rename(ref: torch.nn.Module) -> Callable[[dict], dict]:
    arch = BY_DIFFUSERS[type(ref).__name__]
    return lambda grads: arch.keymap(dict(ref.config)).convert(grads, None)[0]


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def first(out):
    """The output tensor(s) of a diffusers model (``.sample``, or ControlNet's residuals, flattened)."""
    if hasattr(out, "sample"):
        return out.sample
    down, mid = out
    return torch.cat([t.flatten() for t in (*down, mid)])


# ----------------------------------------------------------------------------- families


def unet3d() -> Case:
    from diffusers import UNet3DConditionModel

    ref = tiny.randomize_(UNet3DConditionModel(**tiny.tiny_unet3d_config()), 0)
    ours = native(ref)
    t, ctx = torch.tensor([7, 640]), randn(2, 5, 32, seed=1)
    return Case(ref, ours, randn(2, 4, 3, 8, 6), lambda x: ref(x, t, ctx).sample, lambda x: ours(x, t, ctx),
                keymap_rename(ref))


def i2vgen() -> Case:
    from diffusers import I2VGenXLUNet

    ref = tiny.randomize_(I2VGenXLUNet(**tiny.tiny_i2vgen_unet_config()), 0)
    ours = native(ref)
    t, fps = torch.tensor([5, 700]), torch.tensor([16, 8])
    image_latents, image_embeds, text = randn(2, 4, 3, 8, 6, seed=1), randn(2, 32, seed=2), randn(2, 7, 32, seed=3)
    return Case(ref, ours, randn(2, 4, 3, 8, 6),
                lambda x: ref(x, t, fps=fps, image_latents=image_latents, image_embeddings=image_embeds,
                              encoder_hidden_states=text).sample,
                lambda x: ours(x, t, fps, image_latents, image_embeds, text), keymap_rename(ref))


def svd_unet() -> Case:
    from diffusers import UNetSpatioTemporalConditionModel

    ref = tiny.randomize_(UNetSpatioTemporalConditionModel(**tiny.tiny_svd_unet_config()), 0)
    ours = native(ref)
    t, ctx, ids = torch.tensor([0.5, -0.7]), randn(2, 1, 32, seed=1), torch.tensor([[6.0, 127.0, 0.02], [5.0, 40.0, 0.3]])
    return Case(ref, ours, randn(2, 3, 8, 8, 6), lambda x: ref(x, t, ctx, ids).sample, lambda x: ours(x, t, ctx, ids),
                keymap_rename(ref))


def _motion(unet_config: dict, adapter_config: dict, added: dict | None) -> Case:
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet = tiny.randomize_(UNet2DConditionModel(**unet_config), 0)
    adapter = tiny.randomize_(MotionAdapter(**adapter_config), 1)
    ref = UNetMotionModel.from_unet2d(unet, adapter)
    if getattr(unet, "add_embedding", None) is not None:  # diffusers' from_unet2d does not copy add_embedding (a diffusers bug)
        ref.add_embedding.load_state_dict(unet.add_embedding.state_dict())
    ours = UNetMotion(native(unet), native(adapter))
    unet_map = unet2d_map(dict(unet.config))

    def rename(grads: dict) -> dict:
        spatial, motion = split_state_dict(grads)
        return {**{f"unet.{k}": v for k, v in unet_map.convert(spatial, None)[0].items()},
                **{f"adapter.{k}": v for k, v in MOTION_ADAPTER_MAP.convert(motion, None)[0].items()}}

    frames, t = 3, torch.tensor([7, 640])
    ctx = randn(2, 5, unet_config["cross_attention_dim"], seed=1)
    kwargs = {"added_cond_kwargs": added} if added else {}
    return Case(ref, ours, randn(2, 4, frames, 8, 6),
                lambda x: ref(x, t, ctx.repeat_interleave(frames, dim=0), **kwargs).sample,
                lambda x: ours(x, t, ctx, **kwargs), rename)


def motion_sd15() -> Case:
    return _motion(tiny.tiny_unet2d_config(), tiny.tiny_motion_adapter_config(use_motion_mid_block=True), None)


def motion_sdxl() -> Case:
    added = {"text_embeds": randn(2, 20, seed=2), "time_ids": torch.tensor([[32.0, 48, 0, 0, 32, 48]] * 2)}
    return _motion(tiny.tiny_sdxl_unet_config(), tiny.tiny_sdxl_motion_adapter_config(), added)


def vae() -> Case:
    from diffusers import AutoencoderKL

    ref = tiny.randomize_(AutoencoderKL(**tiny.tiny_vae_config()), 0)
    ours = native(ref)
    return Case(ref, ours, randn(2, 3, 16, 12), lambda x: ref(x).sample, lambda x: ours(x), keymap_rename(ref))


def svd_vae() -> Case:
    from diffusers import AutoencoderKLTemporalDecoder

    # two layers per block, as the released model: with one, the decoder's mid-block attention is built but not run
    ref = tiny.randomize_(AutoencoderKLTemporalDecoder(**tiny.tiny_svd_vae_config(layers_per_block=2)), 0)
    ours = native(ref)
    return Case(ref, ours, randn(3, 3, 16, 12), lambda x: ref(x, num_frames=3).sample,
                lambda x: ours(x, num_frames=3), keymap_rename(ref))


def controlnet() -> Case:
    from diffusers import ControlNetModel

    ref = tiny.randomize_(ControlNetModel(**tiny_controlnet_config()), 0)
    ours = native(ref)
    t, ctx, cond = torch.tensor([7, 640]), randn(2, 7, 24, seed=1), torch.rand(2, 3, 16, 12)
    return Case(ref, ours, randn(2, 4, 8, 6), lambda x: first(ref(x, t, ctx, cond, return_dict=False)),
                lambda x: first(ours(x, t, ctx, cond)), keymap_rename(ref))


def sparse_controlnet() -> Case:
    """The differentiated input is the condition (SparseCtrl zeroes the noisy latents: no gradient reaches them)."""
    from diffusers import SparseControlNetModel

    ref = tiny.randomize_(SparseControlNetModel(**tiny_sparse_config("rgb")), 0)
    ours = native(ref)
    sample, t, ctx = randn(2, 4, 3, 8, 6), torch.tensor([7, 640]), randn(6, 7, 24, seed=1)
    mask = torch.zeros(2, 1, 3, 8, 6)
    mask[:, :, [0, 2]] = 1
    return Case(ref, ours, randn(2, 4, 3, 8, 6, seed=2),
                lambda x: first(ref(sample, t, ctx, x, conditioning_mask=mask, return_dict=False)),
                lambda x: first(ours(sample, t, ctx, x, mask)), keymap_rename(ref))


FAMILIES = {"unet3d": unet3d, "i2vgen_xl": i2vgen, "svd_unet": svd_unet, "motion_sd15": motion_sd15,
            "motion_sdxl": motion_sdxl, "autoencoder_kl": vae, "svd_vae": svd_vae, "controlnet": controlnet,
            "sparse_controlnet": sparse_controlnet}
# parameters vidcore never uses, by design (checked to get no gradient here, and a ~0 one from diffusers): SVD's
# cross-attentions attend to one token, whose softmax weight is 1 whatever the query, so the queries, keys and the
# norm in front of the queries (norm2) do not change the output
UNUSED = {"svd_unet": r"transformer_blocks\.\d+\.(norm2|attn2\.to_q|attn2\.to_k)\."}


# ----------------------------------------------------------------------------- one training step


def step(model: torch.nn.Module, run: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / d x) of one float32 step in train mode with dropout off; parameter gradients land in
    ``.grad``."""
    model.train().zero_grad(set_to_none=True)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x = x.clone().requires_grad_(True)
    out = run(x)
    loss = (out * randn(*out.shape, seed=99)).mean()
    loss.backward()
    return loss.detach(), x.grad


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def parameter_errors(ref_grads: dict, ours: torch.nn.Module) -> tuple[dict, list[str]]:
    """({vidcore name: error}, names vidcore gave no gradient). Every vidcore parameter must have a renamed
    diffusers gradient and every renamed gradient a vidcore parameter."""
    floor = FLOOR * math.sqrt(sum(g.square().sum().item() for g in ref_grads.values()))
    errors, unused = {}, []
    remaining = dict(ref_grads)
    for name, p in ours.named_parameters():
        assert name in remaining, f"no diffusers gradient maps to {name}"
        g_ref = remaining.pop(name)
        if p.grad is None:
            unused.append(name)
        g = torch.zeros_like(g_ref) if p.grad is None else p.grad
        errors[name] = ((g - g_ref).abs().max() / max(g_ref.abs().max().item(), floor)).item()
    assert not remaining, f"diffusers gradients with no vidcore parameter: {sorted(remaining)[:5]}"
    return errors, unused


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_match_diffusers(family):
    case = FAMILIES[family]()
    loss_ref, dx_ref = step(case.ref, case.run_ref, case.x)
    loss, dx = step(case.ours, case.run_ours, case.x)
    assert abs(loss.item() - loss_ref.item()) <= TOLERANCE * abs(loss_ref.item())
    assert rel(dx, dx_ref) < TOLERANCE
    grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in case.ref.named_parameters()}
    errors, unused = parameter_errors(case.rename(grads), case.ours)
    worst = max(errors, key=errors.get)
    assert errors[worst] < TOLERANCE, f"{worst}: gradient error {errors[worst]:.2e}"
    pattern = UNUSED.get(family)
    assert all(pattern and re.search(pattern, n) for n in unused), f"parameters without gradient: {unused}"
    if pattern:
        assert unused, "the parameters vidcore skips by design got gradients"


# ----------------------------------------------------------------------------- gradient checkpointing


def inner_flags(model: torch.nn.Module) -> list[bool]:
    return [m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")]


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(family):
    case = FAMILIES[family]()
    ours = case.ours
    assert not ours.is_gradient_checkpointing
    loss, dx = step(ours, case.run_ours, case.x)
    plain = {k: p.grad.clone() for k, p in ours.named_parameters() if p.grad is not None}
    with torch.no_grad():
        out = case.run_ours(case.x)

    saved_plain = saved_activation_bytes(ours, case)
    ours.enable_gradient_checkpointing()
    assert ours.is_gradient_checkpointing and all(inner_flags(ours))
    # the forward keeps only the blocks' inputs and what runs outside them (conv_in, embeddings, the output head):
    # 3-16 % of the plain forward's activations in these tiny models
    assert saved_activation_bytes(ours, case) < 0.25 * saved_plain
    ours.eval()
    ours.train()
    assert ours.is_gradient_checkpointing  # a setting, not a mode: train()/eval() leave it on
    calls = count_checkpoints(lambda: step(ours, case.run_ours, case.x))
    loss_ckpt, dx_ckpt = calls.result
    assert calls.count > 0
    assert torch.equal(loss_ckpt, loss)
    torch.testing.assert_close(dx_ckpt, dx, rtol=0, atol=1e-6 * dx.abs().max().item())
    got = {k: p.grad for k, p in ours.named_parameters() if p.grad is not None}
    assert got.keys() == plain.keys()
    for k, g in got.items():
        torch.testing.assert_close(g, plain[k], rtol=0, atol=1e-6 * plain[k].abs().max().item() + 1e-12, msg=k)
    with torch.no_grad():  # inference: the plain calls, the same outputs
        assert count_checkpoints(lambda: case.run_ours(case.x)).count == 0
        assert torch.equal(case.run_ours(case.x), out)

    ours.disable_gradient_checkpointing()
    assert not ours.is_gradient_checkpointing and not any(inner_flags(ours))
    assert count_checkpoints(lambda: step(ours, case.run_ours, case.x)).count == 0


def saved_activation_bytes(model: torch.nn.Module, case: Case) -> int:
    """Bytes of the non-parameter tensors autograd keeps for backward during one training forward (the tensors
    checkpointed blocks keep are packed by checkpoint's own hooks and not seen here: they are recomputed)."""
    params = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        case.run_ours(case.x.clone().requires_grad_(True))
    return total


class Counted(NamedTuple):
    result: object
    count: int


def count_checkpoints(fn: Callable) -> Counted:
    """Run ``fn`` counting the calls that went through torch.utils.checkpoint."""
    import vidcore.nn.checkpointing as ckpt

    count = 0
    original = ckpt.checkpoint

    def counting(*args, **kwargs):
        nonlocal count
        count += 1
        return original(*args, **kwargs)

    ckpt.checkpoint = counting
    try:
        result = fn()
    finally:
        ckpt.checkpoint = original
    return Counted(result, count)
