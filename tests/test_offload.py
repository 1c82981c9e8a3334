"""Group offload (vidcore.nn.group_offload) on the models, and the pipelines' offload switches
(vidcore.pipelines.offload).

On a CPU the onload and offload devices are the same, so the moves are checked through the hooks' bookkeeping: every
layer runs while its group is onloaded, every group is onloaded and offloaded, few groups are onloaded at once, and
the outputs equal those without offload. The CUDA test (skipped without a GPU) measures what is resident."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import tiny
import tiny_animatediff
import tiny_controlnet
import vidcore
from vidcore.errors import UnsupportedFeatureError
from vidcore.models.controlnet import ControlNet, ControlNetConfig
from vidcore.models.motion import MotionAdapter, MotionAdapterConfig, UNetMotion
from vidcore.models.svd_unet import SVDUNet, SVDUNetConfig
from vidcore.models.svd_vae import AutoencoderKLTemporalDecoder, AutoencoderKLTemporalDecoderConfig
from vidcore.models.unet2d import UNet2D, UNet2DConfig
from vidcore.models.unet3d import UNet3D, UNet3DConfig
from vidcore.models.vae import AutoencoderKL, AutoencoderKLConfig
from vidcore.nn.group_offload import GroupOffloadConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = {"block_1": dict(offload_type="block_level", num_blocks_per_group=1),
            "block_2": dict(offload_type="block_level", num_blocks_per_group=2),
            "leaf": dict(offload_type="leaf_level")}
# the most groups onloaded at once: one, or a UNet2D block and the motion module it calls; with two blocks a group,
# a mid block's interleaved lists (resnets 0-1, temporal convs 0-1 and the attention run between them); one layer
MOST_ONLOADED = {"block_1": 2, "block_2": 3, "leaf": 1}


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def build_unet3d():
    unet = UNet3D(UNet3DConfig.from_diffusers_config(tiny.tiny_unet3d_config()))
    return unet, lambda m: m(randn(1, 4, 3, 8, 8), torch.tensor([10]), randn(1, 5, 32, seed=1))


def build_unet2d():
    unet = UNet2D(UNet2DConfig.from_diffusers_config(tiny.tiny_unet2d_config()))
    return unet, lambda m: m(randn(2, 4, 8, 8), torch.tensor([10]), randn(2, 5, 24, seed=1))


def build_unet_motion():
    """With PIA's wider conv_in (read by weight, not called) and a mid-block motion module."""
    unet = UNet2D(UNet2DConfig.from_diffusers_config(tiny.tiny_unet2d_config()))
    adapter = MotionAdapter(MotionAdapterConfig.from_diffusers_config(
        tiny.tiny_motion_adapter_config(use_motion_mid_block=True, conv_in_channels=9)))
    return UNetMotion(unet, adapter), lambda m: m(randn(1, 9, 3, 8, 8), torch.tensor([10]), randn(1, 5, 24, seed=1))


def build_svd_unet():
    unet = SVDUNet(SVDUNetConfig.from_diffusers_config(tiny.tiny_svd_unet_config()))
    return unet, lambda m: m(randn(1, 3, 8, 8, 8), torch.tensor([10.0]), randn(1, 1, 32, seed=1),
                             torch.tensor([[6.0, 127.0, 0.02]]))


def build_controlnet():
    net = ControlNet(ControlNetConfig.from_diffusers_config(tiny_controlnet.tiny_controlnet_config()))
    return net, lambda m: m(randn(2, 4, 8, 8), torch.tensor([10]), randn(2, 5, 24, seed=1), randn(2, 3, 16, 16, seed=2))


def build_vae():
    vae = AutoencoderKL(AutoencoderKLConfig.from_diffusers_config(tiny.tiny_vae_config()))
    return vae, lambda m: m.decode(m.encode(randn(2, 3, 16, 16)).mode())


def build_svd_vae():
    vae = AutoencoderKLTemporalDecoder(AutoencoderKLTemporalDecoderConfig.from_diffusers_config(
        tiny.tiny_svd_vae_config()))
    return vae, lambda m: m.decode(m.encode(randn(3, 3, 16, 16)).mode(), num_frames=3)


MODELS = {"unet3d": build_unet3d, "unet2d": build_unet2d, "unet_motion": build_unet_motion, "svd_unet": build_svd_unet,
          "controlnet": build_controlnet, "vae": build_vae, "svd_vae": build_svd_vae}


def tensors_of(out):
    return [out] if isinstance(out, torch.Tensor) else [t for part in out for t in tensors_of(part)]


def same(a, b) -> bool:
    a, b = tensors_of(a), tensors_of(b)
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def watch(model: nn.Module) -> list[int]:
    """A pre-hook on every module with tensors of its own, after the offload hooks: it checks that the module's
    tensors are onloaded when it runs and records how many groups are onloaded (or prefetched) then."""
    hooks = model.group_offload
    owner = {}
    for group in hooks.groups:
        for m in group.modules if group.own_only else [s for top in group.modules for s in top.modules()]:
            owner.setdefault(id(m), group)
    counts = []

    def check(module, args):
        assert owner[id(module)] in hooks.onloaded, f"{type(module).__name__} ran offloaded"
        counts.append(len(hooks.onloaded) + len(hooks.prefetched))

    for m in model.modules():
        if any(True for _ in m.parameters(recurse=False)):
            m.register_forward_pre_hook(check)
    return counts


def used_modules(model: nn.Module, run) -> set[int]:
    """Ids of the modules a plain run calls, plus those whose weights are read without a call (the temporal
    Conv3d of ``nn.resnet.frame_conv``, PIA's conv_in): what offload must onload. (Some are built but never run,
    as diffusers' unused SVD-VAE mid attention and the q/k projections of a one-token cross attention.)"""
    ran = set()
    handles = [m.register_forward_pre_hook(lambda m, a: ran.add(id(m))) for m in model.modules()]
    run(model)
    for handle in handles:
        handle.remove()
    read = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    read += [model.adapter.conv_in] if isinstance(model, UNetMotion) else []
    return ran | {id(m) for m in read}


def hook_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {name: (len(m._forward_pre_hooks), len(m._forward_hooks)) for name, m in model.named_modules()}


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("name", MODELS)
def test_group_offload_runs_every_group_onloaded_and_matches(name, setting):
    model, run = MODELS[name]()
    tiny.randomize_(model, seed=3).eval()
    before = hook_counts(model)
    with torch.no_grad():
        plain = run(model)
        used = used_modules(model, run)
        model.enable_group_offload("cpu", **SETTINGS[setting])
        hooks = model.group_offload
        assert same(run(model), plain)
        needed = [g for g in hooks.groups if any(id(m) in used for m in g.covered())]
        assert all(g.onloads >= 1 for g in needed), [g.name for g in needed if not g.onloads]
        assert all(g.offloads == g.onloads for g in hooks.groups)
        assert not hooks.onloaded and not hooks.prefetched
        moved = {id(t) for g in hooks.groups for t in g.tensors()}
        assert moved == {id(t) for t in [*model.parameters(), *model.buffers()]}  # nothing stays behind
        counts = watch(model)
        assert same(run(model), plain)
        assert counts and max(counts) <= MOST_ONLOADED[setting], max(counts)
        if setting == "leaf":
            assert len(hooks.groups) == sum(1 for m in model.modules() if any(True for _ in m.parameters(False))
                                            or any(True for _ in m.buffers(False)))
        model.disable_group_offload()
    assert model.group_offload is None
    for m in model.modules():  # the test's own pre-hooks
        m._forward_pre_hooks.clear()
    assert hook_counts(model) == {n: (0, c[1]) for n, c in before.items()}
    with torch.no_grad():
        assert same(run(model), plain)


class FakeStream:
    """A CUDA stream stand-in: the side-stream "copies" are the CPU's plain ``.to``, events are tokens."""

    def record_event(self):
        return object()

    def wait_event(self, event):
        pass


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("name", ["unet3d", "unet_motion", "vae"])
def test_stream_prefetch_bookkeeping(name, setting, monkeypatch):
    """use_stream's prefetch without a GPU: after the first forward (which learns the order) at most one group is
    prefetched beside those running, every prefetch is used or dropped by the end of the call, outputs unchanged."""
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda tensor, stream: None, raising=False)
    model, run = MODELS[name]()
    tiny.randomize_(model, seed=3).eval()
    with torch.no_grad():
        plain = run(model)
        model.enable_group_offload("cpu", **SETTINGS[setting])
        hooks = model.group_offload
        hooks._stream = FakeStream()
        assert same(run(model), plain)
        counts = watch(model)
        prefetches = []
        hooks._prefetch_after = lambda group, go=hooks._prefetch_after: (go(group), prefetches.append(group))
        assert same(run(model), plain) and same(run(model), plain)
    assert not hooks.onloaded and not hooks.prefetched
    assert prefetches and max(counts) <= MOST_ONLOADED[setting] + 1
    model.disable_group_offload()


def test_block_groups_and_run_order():
    """Blocks of each list in groups of num_blocks_per_group, the rest one group each; the order the first forward
    ran them in is what a stream prefetches by (the mid block before the up blocks)."""
    unet, run = build_unet3d()
    unet.enable_group_offload("cpu", num_blocks_per_group=2)
    names = [g.name for g in unet.group_offload.groups]
    assert {"conv_in", "time_embedding", "down_blocks.0-1", "up_blocks.0-1", "conv_out",
            "mid_block.resnets.0-1"} <= set(names)
    with torch.no_grad():
        run(unet)
    order = [g.name for g in unet.group_offload.order]
    assert order.index("conv_in") < order.index("down_blocks.0-1") < order.index("mid_block.resnets.0-1")
    assert order.index("mid_block.resnets.0-1") < order.index("up_blocks.0-1")
    assert order.index("up_blocks.0-1") < order.index("conv_out")
    unet.disable_group_offload()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="offload_type"):
        GroupOffloadConfig("cpu", offload_type="layer_level")
    with pytest.raises(ValueError, match="num_blocks_per_group"):
        GroupOffloadConfig("cpu", num_blocks_per_group=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_streams_and_cuda_devices_need_cuda():
    unet, _ = build_unet3d()
    with pytest.raises(UnsupportedFeatureError, match="use_stream=True needs CUDA .*pinned CPU memory"):
        unet.enable_group_offload("cpu", use_stream=True)
    with pytest.raises(UnsupportedFeatureError, match="onload_device='cuda' needs CUDA"):
        unet.enable_group_offload("cuda")
    assert unet.group_offload is None and not any(m._forward_pre_hooks for m in unet.modules())


# -- pipelines ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    folder = tmp_path_factory.mktemp("offload") / "t2v"
    tiny.build_tiny_t2v_pipeline(folder)
    pipe = vidcore.TextToVideoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe):
    return pipe("a cat", num_frames=3, height=16, width=16, num_inference_steps=2, output_type="pt",
                generator=torch.Generator().manual_seed(0)).frames


@pytest.mark.parametrize("how", ["block_1", "block_2", "leaf", "sequential"])
def test_pipeline_offload_matches_and_hooks_every_model(t2v, how):
    plain = call(t2v)
    if how == "sequential":
        t2v.enable_sequential_cpu_offload("cpu:0")
    else:
        t2v.enable_group_offload("cpu:0", **SETTINGS[how])
    try:
        assert t2v.device == torch.device("cpu:0")  # the onload device: latents are made there
        assert torch.equal(call(t2v), plain)
        for model in (t2v.text_encoder, t2v.unet, t2v.vae):
            hooks = model.group_offload
            if how in ("leaf", "sequential"):
                assert hooks.config.offload_type == "leaf_level"
            assert not hooks.onloaded
            ran = [g for g in hooks.groups if g.onloads]
            assert ran and all(g.offloads == g.onloads for g in ran)
            if model is not t2v.vae:  # the VAE's encoder does not run in text-to-video
                assert len(ran) == len(hooks.groups)
    finally:
        if how == "sequential":
            t2v.disable_sequential_cpu_offload()
        else:
            t2v.disable_group_offload()
    assert all(getattr(m, "group_offload", None) is None for m in (t2v.text_encoder, t2v.unet, t2v.vae))
    assert t2v.device == torch.device("cpu")
    assert torch.equal(call(t2v), plain)


def test_animatediff_pipeline_hooks_the_motion_adapter_once(tmp_path):
    """The motion adapter is a component and also inside the UNetMotion: it is hooked once, with the UNet."""
    setup = tiny_animatediff.build_tiny_animatediff(tmp_path)
    pipe = vidcore.AnimateDiffPipeline.from_pretrained(setup.sd, motion_adapter=setup.adapter)
    pipe.set_progress_bar_config(disable=True)
    plain = call(pipe)
    pipe.enable_group_offload("cpu")
    try:
        assert getattr(pipe.motion_adapter, "group_offload", None) is None and pipe.unet.group_offload is not None
        assert torch.equal(call(pipe), plain)
        assert all(g.offloads == g.onloads for g in pipe.unet.group_offload.groups)
    finally:
        pipe.disable_group_offload()
    assert torch.equal(call(pipe), plain)


def test_controlled_video_pipeline_offloads_its_controlnet(tmp_path):
    """The ControlNet runs beside the UNet: under the hooks the pipeline leaves it to them."""
    from vidcore.pipelines.controlled_video import ControlledVideoPipeline

    setup = tiny_controlnet.build_tiny_controlled(tmp_path)
    pipe = ControlledVideoPipeline.from_pretrained(setup.sd, controlnet=setup.controlnet)
    pipe.set_progress_bar_config(disable=True)
    frames = tiny_controlnet.random_control_frames(3, 16, 16, seed=2)

    def run():
        return pipe("a robot", frames, num_inference_steps=2, output_type="pt",
                    generator=torch.Generator().manual_seed(1)).frames

    plain = run()
    pipe.enable_sequential_cpu_offload("cpu")
    try:
        assert torch.equal(run(), plain)
        groups = pipe.controlnet.group_offload.groups
        assert all(g.onloads for g in groups if g.name.startswith("controlnet_down_blocks"))
        assert all(g.offloads == g.onloads for g in groups)
    finally:
        pipe.disable_sequential_cpu_offload()
    assert torch.equal(run(), plain)


def test_one_offload_kind_at_a_time(t2v):
    t2v.enable_group_offload("cpu")
    try:
        with pytest.raises(UnsupportedFeatureError, match="disable_group_offload"):
            t2v.enable_model_cpu_offload("cpu")
        with pytest.raises(UnsupportedFeatureError, match="disable_group_offload"):
            t2v.enable_sequential_cpu_offload("cpu")
        with pytest.raises(UnsupportedFeatureError, match="hooks place the weights"):
            t2v.to("cpu")
        t2v.to(dtype=torch.float32)  # a dtype alone moves nothing
    finally:
        t2v.disable_group_offload()
    t2v.enable_model_cpu_offload("cpu")
    try:
        with pytest.raises(UnsupportedFeatureError, match="disable_model_cpu_offload"):
            t2v.enable_group_offload("cpu")
    finally:
        t2v.disable_model_cpu_offload()
    assert t2v.unet.group_offload is None


# -- on a GPU -----------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("use_stream", [False, True])
def test_cuda_only_onloaded_groups_are_resident(use_stream):
    """leaf_level on a GPU: during the forward about one layer is on the GPU (+ one prefetched, + one whose memory
    waits for the compute stream), nothing after it, and the output is the no-offload one."""
    unet = UNet3D(UNet3DConfig.from_diffusers_config(tiny.tiny_unet3d_config(block_out_channels=(64, 128))))
    tiny.randomize_(unet, seed=3).eval()
    inputs = (randn(1, 4, 2, 8, 8), torch.tensor([10]), randn(1, 5, 32, seed=1))
    with torch.no_grad():
        expected = unet.cuda()(*(x.cuda() for x in inputs))
        unet.cpu()
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        unet.enable_group_offload("cuda", offload_type="leaf_level", use_stream=use_stream)
        sizes = sorted(sum(t.numel() * t.element_size() for t in g.tensors()) for g in unet.group_offload.groups)
        allowed = sum(sizes[-(2 + use_stream):]) + (4 << 20)  # the largest layers + room for the tiny activations
        peaks = []

        def measure(module, args):
            torch.cuda.synchronize()
            peaks.append(torch.cuda.memory_allocated() - baseline)

        for m in unet.modules():
            m.register_forward_pre_hook(measure)
        cuda_inputs = tuple(x.cuda() for x in inputs)
        for _ in range(2):  # the second forward prefetches in the learned order
            got = unet(*cuda_inputs)
        torch.cuda.synchronize()
        assert all(p.device.type == "cpu" for p in unet.parameters())
        assert max(peaks) <= allowed < sum(sizes), (max(peaks), allowed, sum(sizes))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        unet.disable_group_offload()
        if use_stream:
            assert all(p.is_pinned() for p in unet.parameters())


@pytest.mark.parametrize("kind", ["block_level", "leaf_level"])
@pytest.mark.parametrize("cast_first", [True, False], ids=["cast_then_offload", "offload_then_cast"])
@pytest.mark.parametrize("name", ["unet3d", "unet_motion"])
def test_offload_composes_with_fp8_storage(name, cast_first, kind):
    """Group offload and layerwise casting together (what the low-memory preset turns on with a GPU), in either
    order: the output is the cast model's alone, and the cast layers hold fp8 between calls."""
    def cast(model):
        model.enable_layerwise_casting(torch.float8_e4m3fn, compute_dtype=torch.float32)

    model, run = MODELS[name]()
    tiny.randomize_(model, seed=3).eval()
    cast(model)
    expected = run(model)
    model, run = MODELS[name]()
    tiny.randomize_(model, seed=3).eval()
    steps = [cast, lambda m: m.enable_group_offload("cpu", offload_type=kind)]
    for step in steps if cast_first else steps[::-1]:
        step(model)
    assert same(run(model), expected)
    stored = {p.dtype for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    assert torch.float8_e4m3fn in stored


def test_a_failed_onload_leaves_every_tensor_on_the_host(monkeypatch):
    """An onload that fails half way (out of memory on a small GPU) moves the group's copied tensors back: nothing
    is stranded on the onload device, the group is not marked onloaded, and the next call works."""
    model, run = MODELS["unet3d"]()
    tiny.randomize_(model, seed=3).eval()
    expected = run(model)
    model.enable_group_offload("cpu", offload_type="block_level")
    hooks = model.group_offload
    group = max(hooks.groups, key=lambda g: len(list(g.tensors())))
    before = {id(t): t.data_ptr() for t in group.tensors()}
    real_to, calls = torch.Tensor.to, []

    def failing_to(self, *args, **kwargs):  # a move that makes a new tensor (as to a GPU), then runs out
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_to(self, *args, **kwargs).clone()

    monkeypatch.setattr(torch.Tensor, "to", failing_to)
    with pytest.raises(RuntimeError, match="simulated"):
        hooks.onload(group)
    monkeypatch.undo()
    assert group not in hooks.onloaded and not group.host
    assert all(t.data_ptr() == before[id(t)] for t in group.tensors())
    assert same(run(model), expected)
