"""UNet3DConfig.frame_positions, vidcore's one extension of ModelScope's UNet3D (used by the demo model): a
fixed sinusoidal frame-position table added before every temporal attention, nothing else changed."""

from __future__ import annotations

import pytest
import torch

from vidcore.loading import load_model, save_diffusers
from vidcore.models.unet3d import UNet3D, UNet3DConfig

CONFIG = dict(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
              up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, norm_num_groups=4,
              cross_attention_dim=12, attention_head_dim=8)


def models(seed=0):
    """The same weights with and without frame positions."""
    torch.manual_seed(seed)
    plain = UNet3D(UNet3DConfig(**CONFIG)).eval()
    with torch.no_grad():
        for p in plain.parameters():  # no zero-initialised layers: every path contributes
            p.add_(0.05 * torch.randn_like(p))
    positioned = UNet3D(UNet3DConfig(**CONFIG, frame_positions=16)).eval()
    missing, unexpected = positioned.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.endswith("pos_embed.pe") for k in missing)
    return plain, positioned


def inputs(f=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, f, 8, 8, generator=g), torch.tensor([10, 900]), torch.randn(2, 5, 12, generator=g)


def test_positions_are_the_only_change():
    plain, positioned = models()
    tables = [m for m in positioned.modules() if type(m).__name__ == "SinusoidalPositions"]
    assert len(tables) == 1 + 1 + 1 + 2  # transformer_in, down level 0, mid block, up level 1 (2 layers)
    x, t, ctx = inputs()
    with torch.no_grad():
        assert (positioned(x, t, ctx) - plain(x, t, ctx)).abs().max() > 1e-3
        for table in tables:
            table.pe.zero_()
        torch.testing.assert_close(positioned(x, t, ctx), plain(x, t, ctx), rtol=0, atol=0)


def test_config_round_trip_and_absent_from_modelscope_configs(tmp_path):
    assert "frame_positions" not in UNet3DConfig(**CONFIG).to_diffusers_config()
    _, positioned = models()
    save_diffusers(positioned, tmp_path / "unet")
    loaded = load_model(tmp_path / "unet")
    assert loaded.config.frame_positions == 16
    x, t, ctx = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, ctx), positioned(x, t, ctx), rtol=0, atol=0)


def test_more_frames_than_positions_is_a_clear_error():
    _, positioned = models()
    x, t, ctx = inputs(f=17)
    with pytest.raises(ValueError, match="17 frames is more than this temporal module's 16 positions"):
        positioned(x, t, ctx)
