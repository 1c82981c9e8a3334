"""Key-map engine: rules both ways, strict checks with actionable messages, atomic load_into."""

import pytest
import torch
from torch import nn

from vidcore.conversion.engine import KeyMap, Rule, conv1x1_to_linear, linear_to_conv1x1, load_into
from vidcore.errors import CheckpointError, ConversionError

RULES = [
    Rule("{p}.to_out.0.{leaf}", "{p}.to_out.{leaf}"),
    Rule("{p}.temp_convs.{i:int}.conv1.0.{leaf}", "{p}.temporal_convs.{i}.layers.0.norm.{leaf}"),
    Rule("{p}.proj_in.{leaf}", "{p}.proj_in.{leaf}", forward=conv1x1_to_linear, reverse=linear_to_conv1x1),
    Rule("{key}", "{key}", name="identity"),
]
KMAP = KeyMap(RULES, name="toy")


class _Norm(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.GroupNorm(2, 8)


class _Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([_Norm()])


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj_in = nn.Linear(4, 8)
        self.to_out = nn.Linear(8, 8)
        self.temporal_convs = nn.ModuleList([_Mixer(), _Mixer()])


class Net(nn.Module):
    """Target layout of the toy map."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.norm = nn.LayerNorm(8)


class _SourceTemporal(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.GroupNorm(2, 8))


class _SourceBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj_in = nn.Conv2d(4, 8, 1)
        self.to_out = nn.Sequential(nn.Linear(8, 8))
        self.temp_convs = nn.ModuleList([_SourceTemporal(), _SourceTemporal()])


class SourceNet(nn.Module):
    """Source layout of the toy map."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([_SourceBlock(), _SourceBlock()])
        self.norm = nn.LayerNorm(8)


def source_state_dict(seed=0):
    """The toy checkpoint in the source layout (1x1 convs, to_out.0, temp_convs.i.conv1.0)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for b in range(2):
        p = f"blocks.{b}"
        sd[f"{p}.proj_in.weight"] = torch.randn(8, 4, 1, 1, generator=g)
        sd[f"{p}.proj_in.bias"] = torch.randn(8, generator=g)
        sd[f"{p}.to_out.0.weight"] = torch.randn(8, 8, generator=g)
        sd[f"{p}.to_out.0.bias"] = torch.randn(8, generator=g)
        for i in range(2):
            sd[f"{p}.temp_convs.{i}.conv1.0.weight"] = torch.randn(8, generator=g)
            sd[f"{p}.temp_convs.{i}.conv1.0.bias"] = torch.randn(8, generator=g)
    sd["norm.weight"] = torch.randn(8, generator=g)
    sd["norm.bias"] = torch.randn(8, generator=g)
    return sd


def target_shapes():
    return {k: v.shape for k, v in Net().state_dict().items()}


def test_forward_then_reverse_round_trips():
    src = source_state_dict()
    out, report = KMAP.convert(src, target_shapes())
    assert set(out) == set(target_shapes())
    assert torch.equal(out["blocks.1.proj_in.weight"], src["blocks.1.proj_in.weight"][:, :, 0, 0])
    assert torch.equal(out["blocks.0.temporal_convs.1.layers.0.norm.bias"], src["blocks.0.temp_convs.1.conv1.0.bias"])
    back, _ = KMAP.convert(out, {k: v.shape for k, v in src.items()}, direction="reverse")
    assert back.keys() == src.keys()
    assert all(torch.equal(back[k], src[k]) for k in src)
    assert report.counts == {
        "{p}.proj_in.{leaf} -> {p}.proj_in.{leaf}": 4,
        "{p}.to_out.0.{leaf} -> {p}.to_out.{leaf}": 4,
        "{p}.temp_convs.{i:int}.conv1.0.{leaf} -> {p}.temporal_convs.{i}.layers.0.norm.{leaf}": 8,
        "identity": 2,
    }
    assert report.mapping["blocks.0.to_out.0.weight"] == "blocks.0.to_out.weight"
    assert "toy (forward): 18 keys" in report.summary()


def test_convert_without_target_shapes_only_renames():
    out, report = KMAP.convert({"a.to_out.0.weight": torch.ones(2)})
    assert list(out) == ["a.to_out.weight"]
    assert report.unused_rules == [r.label for r in RULES if r.label != RULES[0].label]


def test_patterns_match_whole_keys_and_typed_ints():
    rule = Rule("{p}.temp_convs.{i:int}.w", "{p}.t.{i}.w")
    assert rule.plan("x.temp_convs.12.w", "forward").dst_keys == ("x.t.12.w",)
    assert rule.plan("x.temp_convs.a.w", "forward") is None
    assert rule.plan("x.temp_convs.1.w.extra", "forward") is None
    # the int type applies in reverse too
    assert rule.plan("x.t.a.w", "reverse") is None
    # non-greedy: the first '.to_out.0.' splits the key
    r = Rule("{p}.to_out.0.{leaf}", "{p}.o.{leaf}")
    assert r.plan("a.b.to_out.0.to_out.0.w", "forward").dst_keys == ("a.b.o.to_out.0.w",)
    # a repeated placeholder must repeat the same text
    rep = Rule("{a}.{a}", "{a}")
    assert rep.plan("x.x", "forward").dst_keys == ("x",)
    assert rep.plan("x.y", "forward") is None


def test_rule_validation():
    with pytest.raises(ValueError, match="same placeholders"):
        Rule("{p}.a.{leaf}", "{p}.b")
    with pytest.raises(ValueError, match="forward and reverse"):
        Rule("{k}", "{k}", forward=conv1x1_to_linear)
    with pytest.raises(ValueError, match="bad placeholder"):
        Rule("{p:float}.a", "{p:float}.b")
    with pytest.raises(ValueError, match="direction"):
        KMAP.convert({}, direction="backwards")


def test_unconsumed_source_key_is_named():
    kmap = KeyMap(RULES[:3], name="no-fallback")
    with pytest.raises(ConversionError) as exc:
        kmap.convert(source_state_dict(), None)
    msg = str(exc.value)
    assert "no-fallback" in msg
    assert "source keys no rule consumed (2)" in msg
    assert "norm.weight" in msg and "norm.bias" in msg
    assert isinstance(exc.value, CheckpointError)
    assert exc.value.report.unconsumed == ["norm.weight", "norm.bias"]


def test_missing_target_key_is_named():
    src = source_state_dict()
    del src["blocks.1.to_out.0.bias"]
    with pytest.raises(ConversionError, match=r"target keys nothing produced \(1\):\n  blocks\.1\.to_out\.bias"):
        KMAP.convert(src, target_shapes())


def test_unexpected_key_names_the_rule():
    src = source_state_dict()
    src["blocks.0.to_out.0.extra"] = torch.ones(1)
    with pytest.raises(ConversionError) as exc:
        KMAP.convert(src, target_shapes())
    assert "produced keys the target does not have (1):\n  blocks.0.to_out.extra (rule '{p}.to_out.0.{leaf} -> {p}.to_out.{leaf}')" in str(exc.value)


def test_shape_mismatch_names_source_target_rule_and_both_shapes():
    src = source_state_dict()
    src["blocks.0.proj_in.weight"] = torch.randn(8, 5, 1, 1)
    src["norm.weight"] = torch.randn(9)
    with pytest.raises(ConversionError) as exc:
        KMAP.convert(src, target_shapes())
    msg = str(exc.value)
    assert "shape mismatches (2):" in msg
    assert (
        "blocks.0.proj_in.weight -> blocks.0.proj_in.weight (rule '{p}.proj_in.{leaf} -> {p}.proj_in.{leaf}'): "
        "got (8, 5), expected (8, 4)"
    ) in msg
    assert "norm.weight -> norm.weight (rule 'identity'): got (9,), expected (8,)" in msg
    # shape problems are never tolerated
    with pytest.raises(ConversionError, match="shape mismatches"):
        KMAP.convert(src, target_shapes(), strict=False)


def test_two_sources_for_one_target_is_an_error():
    src = {"a.to_out.0.weight": torch.ones(2), "a.to_out.weight": torch.ones(2)}
    with pytest.raises(ConversionError) as exc:
        KMAP.convert(src)
    msg = str(exc.value)
    assert "target keys produced more than once (1):" in msg
    assert "a.to_out.weight <- a.to_out.0.weight (rule '{p}.to_out.0.{leaf} -> {p}.to_out.{leaf}'), a.to_out.weight (rule 'identity')" in msg


def test_all_problems_reported_together_and_lists_truncated():
    src = {f"junk.{i}": torch.ones(1) for i in range(25)}
    with pytest.raises(ConversionError) as exc:
        KeyMap([Rule("{p}.to_out.0.{leaf}", "{p}.to_out.{leaf}")], "m").convert(src, {"x": torch.Size([1])})
    msg = str(exc.value)
    assert "source keys no rule consumed (25):" in msg and "... and 15 more" in msg
    assert "target keys nothing produced (1):\n  x" in msg
    assert msg.count("junk.") == 10


def test_non_strict_tolerates_key_set_differences():
    src = source_state_dict()
    src["stray"] = torch.ones(1)
    del src["norm.bias"]
    kmap = KeyMap(RULES[:3] + [Rule("norm.{leaf}", "norm.{leaf}")], "partial")
    out, report = kmap.convert(src, target_shapes(), strict=False)
    assert "stray" not in out and report.unconsumed == ["stray"]
    assert report.missing == ["norm.bias"]


def test_conv1x1_linear_transforms_are_inverse():
    w = torch.randn(6, 3, 1, 1)
    lin = conv1x1_to_linear(w)
    assert lin.shape == (6, 3) and torch.equal(linear_to_conv1x1(lin), w)
    b = torch.randn(6)
    assert conv1x1_to_linear(b) is b and linear_to_conv1x1(b) is b
    x = torch.randn(2, 3, 5, 5)
    conv_out = torch.nn.functional.conv2d(x, w)
    lin_out = torch.einsum("oi,bihw->bohw", lin, x)
    assert torch.allclose(conv_out, lin_out, atol=1e-6)


def test_load_into_loads_and_reverses():
    net = Net()
    src = source_state_dict()
    report = load_into(net, src, KMAP)
    assert torch.equal(net.blocks[1].proj_in.weight, src["blocks.1.proj_in.weight"][:, :, 0, 0])
    assert report.counts["identity"] == 2

    # the same map loads the target layout into a module in the source layout
    source_net = SourceNet()
    load_into(source_net, net.state_dict(), KMAP, direction="reverse")
    assert all(torch.equal(source_net.state_dict()[k], v) for k, v in src.items())


def test_load_into_meta_module_assigns():
    with torch.device("meta"):
        net = Net()
    load_into(net, source_state_dict(), KMAP)
    assert not any(p.is_meta for p in net.parameters())
    assert isinstance(net.blocks[0].to_out.weight, nn.Parameter)


def test_load_into_leaves_module_unchanged_on_failure():
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    src = source_state_dict()
    src["blocks.1.to_out.0.weight"] = torch.randn(8, 7)  # one bad key among many good ones
    with pytest.raises(ConversionError, match="got \\(8, 7\\), expected \\(8, 8\\)"):
        load_into(net, src, KMAP)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
