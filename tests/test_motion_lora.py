"""Motion LoRA (vidcore/models/motion_lora.py, conversion/maps/motion_lora.py): fused into a UNetMotion, the
result equals diffusers' UNetMotionModel with the same LoRA loaded through PEFT and fused at the same scale;
unfusing restores the weights bit for bit; the three file layouts read the same; bad files are clear errors."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from safetensors.torch import save_file

import tiny
import vidcore
from vidcore.conversion.maps.diffusers_motion import MOTION_ADAPTER_MAP
from vidcore.errors import CheckpointError
from vidcore.models.motion import UNetMotion
from vidcore.loading.lora import fuse_lora, load_motion_lora  # (they read files: vidcore.loading)
from vidcore.models.motion_lora import fused_loras, unfuse_lora

pytest.importorskip("peft", reason="diffusers' LoRA loading (the reference) needs peft")

MIRROR = "/work/.mirror/huggingface+diffusers/repo"
LORA_SCRIPT = "scripts/convert_animatediff_motion_lora_to_diffusers.py"
ADAPTER = dict(use_motion_mid_block=True, motion_max_seq_length=16)


def build(tmp_path, seed=0):
    from diffusers import MotionAdapter as RefAdapter
    from diffusers import UNet2DConditionModel, UNetMotionModel

    unet = tiny.randomize_(UNet2DConditionModel(**tiny.tiny_unet2d_config()), seed).eval()
    adapter = tiny.randomize_(RefAdapter(**tiny.tiny_motion_adapter_config(**ADAPTER)), seed + 1).eval()
    unet.save_pretrained(tmp_path / "unet")
    adapter.save_pretrained(tmp_path / "adapter")
    ref = UNetMotionModel.from_unet2d(unet, adapter).eval()
    ours = UNetMotion(vidcore.load_model(tmp_path / "unet"), vidcore.load_model(tmp_path / "adapter"))
    return ref, ours


def motion_attention_layers(ref) -> list[tuple[str, int, int]]:
    """(diffusers layer name, in, out) of every motion-module attention projection."""
    out = []
    for name, module in ref.named_modules():
        if ".motion_modules." in name and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0") and \
                isinstance(module, torch.nn.Linear) and (".attn1." in name or ".attn2." in name):
            out.append((name, module.in_features, module.out_features))
    return out


def legacy_lora(ref, rank=2, seed=3) -> dict:
    """The hub motion-LoRA layout: unet.{...}.attn1.processor.to_q_lora.down.weight, random non-zero halves."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, fan_in, fan_out in motion_attention_layers(ref):
        parent, proj = name.rsplit(".", 1)
        if proj == "0":  # to_out.0
            parent, proj = parent.rsplit(".", 1)
        base = f"unet.{parent}.processor.{proj}_lora"
        state[f"{base}.down.weight"] = torch.randn(rank, fan_in, generator=g) / fan_in ** 0.5
        state[f"{base}.up.weight"] = torch.randn(fan_out, rank, generator=g) * 0.5
    return state


def to_peft(legacy: dict) -> dict:
    out = {}
    for k, v in legacy.items():
        k = k.replace(".processor.", ".").replace("to_out_lora", "to_out.0_lora")
        k = k.replace("_lora.down.weight", ".lora_A.weight").replace("_lora.up.weight", ".lora_B.weight")
        out[k] = v
    return out


def to_original(legacy: dict) -> dict:
    """The original AnimateDiff .ckpt layout of the same LoRA."""
    out = {}
    for k, v in legacy.items():
        k = k.removeprefix("unet.")
        head, rest = k.split(".transformer_blocks.", 1)
        rest = rest.replace(".attn1.", ".attention_blocks.0.").replace(".attn2.", ".attention_blocks.1.")
        out[f"{head}.temporal_transformer.transformer_blocks.{rest}"] = v
    return out


def diffusers_fused(ref, state: dict, scale: float):
    ref.load_lora_adapter(dict(state), prefix="unet", adapter_name="motion")
    ref.fuse_lora(lora_scale=scale)
    return ref


def forward_pair(ref, ours, frames=4):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, frames, 8, 6, generator=g)
    ctx = torch.randn(1, 5, 24, generator=g)
    t = torch.tensor([321])
    with torch.no_grad():
        return ref(x, t, ctx.repeat_interleave(frames, dim=0)).sample, ours(x, t, ctx)


def rel(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("layout", ["legacy-hub", "peft"])
def test_fused_lora_matches_diffusers_peft(tmp_path, layout):
    ref, ours = build(tmp_path)
    legacy = legacy_lora(ref)
    state = legacy if layout == "legacy-hub" else to_peft(legacy)
    save_file(state, tmp_path / "diffusion_pytorch_model.safetensors")
    before_ref, before_ours = forward_pair(ref, ours)
    assert rel(before_ref, before_ours) < 1e-5

    lora = fuse_lora(ours, load_motion_lora(tmp_path), scale=0.7)
    assert len(lora.layers) == len(motion_attention_layers(ref)) and fused_loras(ours)[0][1] == 0.7
    diffusers_fused(ref, state, 0.7)
    expected, got = forward_pair(ref, ours)
    assert rel(before_ref, expected) > 1e-3  # the LoRA really changes the output
    assert rel(expected, got) < 1e-5
    # fused weights agree tensor by tensor (diffusers' fused adapter weights, in vidcore names)
    fused = {k.replace("base_layer.", ""): v for k, v in ref.state_dict().items() if ".motion_modules." in k and
             "lora_" not in k}
    converted, _ = MOTION_ADAPTER_MAP.convert(fused, None)
    for k, v in ours.adapter.state_dict().items():
        assert torch.allclose(converted[k], v, atol=1e-6, rtol=0), k


def test_original_ckpt_layout_matches_diffusers_script(tmp_path):
    """The original AnimateDiff .ckpt, read by vidcore directly, equals diffusers' result on the file its own
    scripts/convert_animatediff_motion_lora_to_diffusers.py makes of it."""
    import importlib.util

    repo = os.environ.get("DIFFUSERS_REPO", MIRROR)
    try:
        text = subprocess.run(["git", "-C", repo, "show", f"HEAD:{LORA_SCRIPT}"], capture_output=True, text=True,
                              check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"diffusers' {LORA_SCRIPT} is not available (set DIFFUSERS_REPO): {err}")
    (tmp_path / "script.py").write_text(text)
    spec = importlib.util.spec_from_file_location("convert_motion_lora", tmp_path / "script.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    ref, ours = build(tmp_path)
    original = to_original(legacy_lora(ref, rank=3, seed=11))
    torch.save({"state_dict": original}, tmp_path / "v2_lora_ZoomIn.ckpt")
    converted = {f"unet.{k}": v for k, v in script.convert_motion_module(original).items()}
    fuse_lora(ours, tmp_path / "v2_lora_ZoomIn.ckpt", scale=1.3)
    diffusers_fused(ref, converted, 1.3)
    expected, got = forward_pair(ref, ours, frames=5)
    assert rel(expected, got) < 1e-5


def test_lora_on_spatial_layers_and_conv_projections(tmp_path):
    """A LoRA may touch the SD UNet too: a 1x1-conv proj_in (SD1.5 layout; vidcore's is linear) and a cross
    attention projection, in PEFT layout."""
    ref, ours = build(tmp_path)
    g = torch.Generator().manual_seed(5)
    state = to_peft(legacy_lora(ref, seed=9))
    proj = "down_blocks.0.attentions.1.proj_in"
    c = ref.get_submodule(proj).in_channels
    state[f"unet.{proj}.lora_A.weight"] = torch.randn(2, c, 1, 1, generator=g) / c ** 0.5
    state[f"unet.{proj}.lora_B.weight"] = torch.randn(c, 2, 1, 1, generator=g)
    k = "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k"
    lin = ref.get_submodule(k)
    state[f"unet.{k}.lora_A.weight"] = torch.randn(4, lin.in_features, generator=g) / lin.in_features ** 0.5
    state[f"unet.{k}.lora_B.weight"] = torch.randn(lin.out_features, 4, generator=g)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    fuse_lora(ours, state, scale=0.5)
    assert not torch.equal(before["unet.down_blocks.0.attentions.1.proj_in.weight"],
                           ours.unet.down_blocks[0].attentions[1].proj_in.weight)
    diffusers_fused(ref, state, 0.5)
    expected, got = forward_pair(ref, ours)
    assert rel(expected, got) < 1e-5


def test_unfuse_restores_bit_exactly(tmp_path):
    ref, ours = build(tmp_path)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    first = legacy_lora(ref, seed=1)
    fuse_lora(ours, first, scale=1.0)
    fuse_lora(ours, to_original(legacy_lora(ref, seed=2)), scale=-0.4)  # a second LoRA on top
    assert [s for _, s in fused_loras(ours)] == [1.0, -0.4]
    changed = [k for k, v in ours.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(".attn" in k for k in changed)
    assert [s for _, s in unfuse_lora(ours)] == [1.0, -0.4]
    for k, v in ours.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert unfuse_lora(ours) == [] and fused_loras(ours) == []


def test_half_precision_model(tmp_path):
    ref, ours = build(tmp_path)
    ours = UNetMotion(ours.unet.half(), ours.adapter.half())
    lora = fuse_lora(ours, legacy_lora(ref), scale=1.0)
    name = next(iter(lora.layers))
    assert ours.adapter.down_blocks[0][0].transformer_blocks[0].attn1.to_q.weight.dtype == torch.float16
    assert name.startswith("down_blocks.")


def test_bad_files_are_clear_errors(tmp_path):
    ref, ours = build(tmp_path)
    good = legacy_lora(ref)
    before = {k: v.clone() for k, v in ours.state_dict().items()}

    def unchanged():
        return all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())

    with pytest.raises(CheckpointError, match="text-encoder LoRA keys"):
        fuse_lora(ours, {**good, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight":
                         torch.ones(2, 3)})
    with pytest.raises(CheckpointError, match="not LoRA weights in a known layout.*model_ema"):
        fuse_lora(ours, {**good, "model_ema.decay": torch.ones(3)})
    one_half = {k: v for k, v in good.items() if not k.endswith("attn1.processor.to_q_lora.up.weight")}
    with pytest.raises(CheckpointError, match="only one of the two LoRA matrices"):
        fuse_lora(ours, one_half)
    layer = "unet.down_blocks.0.motion_modules.7.transformer_blocks.0.attn1.to_q"
    stray = {**good, f"{layer}.lora_A.weight": torch.ones(2, 32), f"{layer}.lora_B.weight": torch.ones(32, 2)}
    with pytest.raises(CheckpointError, match=r"not in this UNetMotion.*motion_modules\.7"):
        fuse_lora(ours, stray)
    wide = dict(good)
    key = next(k for k in wide if k.endswith(".up.weight"))
    wide[key] = torch.ones(wide[key].shape[0] * 2, wide[key].shape[1])
    with pytest.raises(CheckpointError, match="does not fit a weight of shape"):
        fuse_lora(ours, wide)
    assert unchanged() and fused_loras(ours) == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(vidcore.errors.ModelNotFoundError, match="no LoRA weight file"):
        load_motion_lora(tmp_path / "empty")
    torch.save({"state_dict": good, "hook": print}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_motion_lora(tmp_path / "evil.ckpt")
