"""IP-Adapter below the pipeline: vidcore's UNet2D with image embeddings against diffusers' UNet2DConditionModel
with the same original-layout file loaded, and the released files' real sizes (SD1.5 plain / plus, SDXL) on the
meta device: detected kind, every key converted, fit against the real SD1.5 UNet, SDXL refused."""

import pytest
import torch

import tiny
from tiny_ip_adapter import cross_attention_widths, nested, original_ip_adapter
from test_unet2d import SD15_UNET_CONFIG, rel_err
from vidcore.models import ip_adapter as ipa
from vidcore.models.ip_adapter import IPAdapter
from vidcore.models.unet2d import UNet2D, UNet2DConfig


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", ["plain", "plus"])
def test_unet2d_with_image_embeds_matches_diffusers(kind, tmp_path):
    from diffusers import UNet2DConditionModel

    import vidcore

    torch.manual_seed(0)
    config = tiny.tiny_unet2d_config(attention_head_dim=(2, 4))
    ref = tiny.randomize_(UNet2DConditionModel(**config), 1).eval()
    ref.save_pretrained(tmp_path / "unet")
    ours = vidcore.load_model(tmp_path / "unet")
    state = original_ip_adapter(kind, cross_attention_widths(ref), config["cross_attention_dim"], 32, seed=2)
    ref._load_ip_adapter_weights([nested(state)], low_cpu_mem_usage=False)
    adapter = IPAdapter.from_state_dict(state)
    back = adapter.original_state_dict()  # the reverse map gives the file back, bit for bit
    assert sorted(back) == sorted(state) and all(torch.equal(back[k], state[k]) for k in state)
    ipa.attach(ours, [adapter])

    sample, text = torch.randn(2, 4, 16, 8), torch.randn(2, 7, 24)
    embeds = [torch.randn(2, 2, 17, 32) if kind == "plus" else torch.randn(2, 2, 32)]  # two images each
    with torch.no_grad():
        want = ref(sample, 10, text, added_cond_kwargs={"image_embeds": embeds}).sample
        got = ours(sample, 10, text, image_embeds=embeds)
        plain = ours(sample, 10, text)
    assert rel_err(want, got) < 1e-5
    assert rel_err(got, plain) > 1e-2
    ipa.detach(ours)
    assert not any(k.startswith("ip_adapters.") for k in ours.state_dict())
    with torch.no_grad():
        assert torch.equal(ours(sample, 10, text), plain)
    with pytest.raises(ValueError, match="no IP-Adapter is loaded"):
        ours(sample, 10, text, image_embeds=embeds)


def _meta(shapes: dict) -> dict:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _released(kind: str, widths: list[int], context: int, embed: int, d: int = 768) -> dict:
    """Key shapes of h94/IP-Adapter's files: ip-adapter_sd15 / _sdxl (plain), ip-adapter-plus_sd15 /
    ip-adapter-plus_sdxl_vit-h (plus; resampler width ``d``, 64-wide heads)."""
    shapes = {}
    if kind == "plain":
        shapes.update({"image_proj.proj.weight": (4 * context, embed), "image_proj.proj.bias": (4 * context,),
                       "image_proj.norm.weight": (context,), "image_proj.norm.bias": (context,)})
    else:  # Resampler(dim=d, depth=4, dim_head=64, heads=d // 64, num_queries=16, embedding_dim=1280, output_dim)
        shapes.update({"image_proj.latents": (1, 16, d), "image_proj.proj_in.weight": (d, embed),
                       "image_proj.proj_in.bias": (d,), "image_proj.proj_out.weight": (context, d),
                       "image_proj.proj_out.bias": (context,), "image_proj.norm_out.weight": (context,),
                       "image_proj.norm_out.bias": (context,)})
        for i in range(4):
            p = f"image_proj.layers.{i}"
            for n in ("0.norm1", "0.norm2", "1.0"):
                shapes.update({f"{p}.{n}.weight": (d,), f"{p}.{n}.bias": (d,)})
            shapes.update({f"{p}.0.to_q.weight": (d, d), f"{p}.0.to_kv.weight": (2 * d, d),
                           f"{p}.0.to_out.weight": (d, d), f"{p}.1.1.weight": (4 * d, d), f"{p}.1.3.weight": (d, 4 * d)})
    for j, w in enumerate(widths):
        shapes.update({f"ip_adapter.{2 * j + 1}.to_k_ip.weight": (w, context),
                       f"ip_adapter.{2 * j + 1}.to_v_ip.weight": (w, context)})
    return _meta(shapes)


def test_released_sizes_on_meta():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        ref = UNet2DConditionModel.from_config(SD15_UNET_CONFIG)
        ours = UNet2D(UNet2DConfig.from_diffusers_config(SD15_UNET_CONFIG))
    widths = cross_attention_widths(ref)
    assert len(widths) == 16
    assert [a.to_q.out_features for _, a in ipa.cross_attention_layers(ours)] == widths  # diffusers' order
    plain = IPAdapter.from_state_dict(_released("plain", widths, 768, 1024))
    plus = IPAdapter.from_state_dict(_released("plus", widths, 768, 1280))
    assert (plain.config.kind, plain.config.num_tokens, plain.config.image_embed_dim) == ("plain", 4, 1024)
    assert (plus.config.kind, plus.config.num_tokens, plus.config.heads, plus.config.depth) == ("plus", 16, 12, 4)
    ipa.attach(ours, [plain, plus])
    assert all(len(a.image_branches) == 2 for _, a in ipa.cross_attention_layers(ours))
    sdxl = IPAdapter.from_state_dict(_released("plain", [640] * 70, 2048, 1280))  # ip-adapter_sdxl
    with pytest.raises(ValueError, match="image tokens are 2048 wide but the UNet's cross_attention_dim is 768"):
        ipa.check_fits(ours, sdxl)
    sdxl_plus = IPAdapter.from_state_dict(_released("plus", [640] * 70, 2048, 1280, d=1280))  # plus_sdxl_vit-h
    c = sdxl_plus.config
    assert (c.kind, c.num_tokens, c.heads, c.hidden_dim, c.output_dim, c.image_embed_dim) == ("plus", 16, 20, 1280,
                                                                                             2048, 1280)
    with pytest.raises(ValueError, match="does not fit this UNet"):
        ipa.attach(ours, [sdxl_plus])
    assert len(ipa.attached(ours)) == 2  # a refused adapter leaves the loaded ones in place
