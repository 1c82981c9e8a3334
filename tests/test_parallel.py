"""vidcore.parallel on CPU with gloo: spawned process groups of 2, 3 and 4 ranks, tiny shapes.

One spawn per world size runs every check of that size (process start-up dominates) and each rank
reports max abs errors against the single-process computation, which every rank also runs.
"""

from __future__ import annotations

import json
import math
import os
import socket
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

TOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Seeded non-trivial values for every parameter (no zero-initialised layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                p.copy_(noise / math.sqrt(math.prod(p.shape[1:])))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return module.eval()


def tiny_unet(seed=0, **overrides):
    from vidcore.models.unet3d import UNet3D, UNet3DConfig

    cfg = dict(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
               up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, norm_num_groups=4,
               cross_attention_dim=12, attention_head_dim=8)
    cfg.update(overrides)
    return randomize(UNet3D(UNet3DConfig(**cfg)), seed)


def tiny_pipeline():
    from vidcore.models.vae import AutoencoderKL, AutoencoderKLConfig
    from vidcore.pipelines.text_to_video import TextToVideoPipeline
    from vidcore.schedulers import from_config

    vae = randomize(AutoencoderKL(AutoencoderKLConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                                      down_block_types=("DownEncoderBlock2D",) * 2,
                                                      up_block_types=("UpDecoderBlock2D",) * 2)), 3)
    scheduler = from_config({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                             "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
                             "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon"})
    pipe = TextToVideoPipeline(tokenizer=None, text_encoder=None, unet=tiny_unet(2), vae=vae, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def err(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)


# ----------------------------------------------------------------------------- checks run on every rank


def check_primitives(rank, world, res):

    for f in (2 * world, 2 * world + 1):  # even split, and rank 0 holding one frame more
        _check_primitives(rank, world, res, f, "" if f % world == 0 else "_uneven")


def _check_primitives(rank, world, res, f, tag):
    from vidcore.nn.attention import temporal_attend
    from vidcore.nn.resnet import frame_conv, video_norm
    from vidcore.parallel import comm, frame_parallel

    g = dist.group.WORLD
    gen = torch.Generator().manual_seed(0)
    b, c = 2, 6
    fsizes = comm.split_sizes(f, world)
    fl = fsizes[rank]
    mine = slice(sum(fsizes[:rank]), sum(fsizes[:rank + 1]))
    # layout switch, pixel count not divisible by the world size
    for n in (7, world):
        full = torch.randn(b, f, n, c, generator=gen)
        local = full[:, mine].reshape(b * fl, n, c)
        px = comm.frames_to_pixels(local, fl, g, fsizes)
        sizes = comm.split_sizes(n, world)
        start = sum(sizes[:rank])
        expect = full[:, :, start:start + sizes[rank]].reshape(b * f, sizes[rank], c)
        ntag = "W" if n == world else n
        res[f"frames_to_pixels_n{ntag}{tag}"] = (px - expect).abs().max().item()
        res[f"pixels_to_frames_n{ntag}{tag}"] = (comm.pixels_to_frames(px, fl, n, g, fsizes) - local).abs().max().item()
    # gather of unequal slices
    full = torch.randn(b, c, f, 2, generator=gen)
    res[f"gather{tag}"] = (comm.gather(full[:, :, mine], g, dim=2, sizes=fsizes) - full).abs().max().item()
    # halo-exchanged temporal conv, through the nn hook
    conv = randomize(nn.Conv3d(c, 4, (3, 1, 1), padding=(1, 0, 0)), 1)
    x = torch.randn(b, c, f, 3, 5, generator=gen)
    ref = frame_conv(conv, x)
    with frame_parallel(g, f):
        res[f"frame_conv{tag}"] = err(frame_conv(conv, x[:, :, mine]), ref[:, :, mine])
    # GroupNorm with statistics across ranks (offset data: a naive E[x^2]-E[x]^2 would lose digits)
    norm = randomize(nn.GroupNorm(3, c), 2)
    x = 3 * torch.randn(b, c, f, 3, 5, generator=gen) + 5
    ref = norm(x)
    with frame_parallel(g, f):
        res[f"group_norm{tag}"] = err(video_norm(norm, x[:, :, mine]), ref[:, :, mine])
    # temporal attention (all_to_all in and out), 9 pixels
    for n in (9, 1):  # 1 pixel: fewer than ranks, padded
        heads, d = 2, 4
        q, k, v = (torch.randn(b * f, n, heads * d, generator=gen) for _ in range(3))
        ref = temporal_attend(q, k, v, f, heads).view(b, f, n, -1)[:, mine].reshape(b * fl, n, -1)
        sl = lambda t: t.view(b, f, n, -1)[:, mine].reshape(b * fl, n, -1)  # noqa: E731
        with frame_parallel(g, f):
            res[f"temporal_attend_n{n}{tag}"] = err(temporal_attend(sl(q), sl(k), sl(v), fl, heads), ref)
    # no handler outside the context
    from vidcore.nn.frame_hooks import frame_handler
    res[f"handler_removed{tag}"] = float(frame_handler() is not None)


UNET_CASES = {
    "two-levels": (dict(), (2, 4, 8, 12)),
    "frame-positions": (dict(frame_positions=8), (1, 4, 8, 4)),  # the demo model's extension
    "three-levels-odd-size": (dict(block_out_channels=(8, 16, 16), layers_per_block=1, attention_head_dim=4,
                                   down_block_types=("CrossAttnDownBlock3D",) * 2 + ("DownBlock3D",),
                                   up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 2), (1, 4, 9, 7)),
}


def frames_runner():
    from vidcore.parallel import ParallelConfig, ParallelRunner

    return ParallelRunner(ParallelConfig.create(cfg=False, frames=True))


def check_unet(rank, world, res, num_frames, tag=""):
    runner = frames_runner()
    for name, (overrides, (b, c, h, w)) in UNET_CASES.items():
        unet = tiny_unet(5, **overrides)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(b, c, num_frames, h, w, generator=gen)
        ctx = torch.randn(b, 5, 12, generator=gen)
        t = torch.tensor([3, 871])[:b]
        with torch.no_grad():
            ref = unet(x, t, ctx)
            got = runner.wrap(lambda x, ctx: unet(x, t, ctx), False, frame_dim=2)(x, ctx=ctx)
        res[f"unet_{name}{tag}"] = err(got, ref)


def check_wrap(rank, world, res, modes):
    """ParallelRunner.wrap knows no model family: a toy model made of the frame-mixing ops of nn/ (temporal
    conv, GroupNorm over frames, temporal attention, frame positions), with a batch-only and a framed
    condition, in both frame layouts, under guidance and without, equals its single-process call."""
    from einops import rearrange

    from vidcore.nn.attention import temporal_attend
    from vidcore.nn.frame_hooks import frame_start
    from vidcore.nn.resnet import frame_conv, video_norm
    from vidcore.parallel import ParallelConfig, ParallelRunner
    from vidcore.sampling.guidance import guided

    c = 4
    conv = randomize(nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0)), 12)
    norm = randomize(nn.GroupNorm(2, c), 13)

    def toy(x, context, frames, frame_dim):  # x, frames: b c f h w (frame_dim 2) or b f c h w (frame_dim 1)
        if frame_dim == 1:
            x, frames = x.transpose(1, 2), frames.transpose(1, 2)
        b, _, f, h, w = x.shape
        pos = torch.arange(frame_start(f), frame_start(f) + f, dtype=x.dtype).view(1, 1, f, 1, 1)
        y = video_norm(norm, frame_conv(conv, x + frames + pos) * context.view(b, c, 1, 1, 1))
        q = rearrange(y, "b c f h w -> (b f) (h w) c")
        y = rearrange(temporal_attend(q, q.flip(-1), q, f, 2), "(b f) (h w) c -> b c f h w", f=f, h=h)
        return y.transpose(1, 2) if frame_dim == 1 else y

    runners = {(cfg, fr): ParallelRunner(ParallelConfig.create(cfg=cfg, frames=fr)) for cfg, fr in modes}
    gen = torch.Generator().manual_seed(8)
    for frame_dim in (2, 1):
        shape = (1, c, 5, 3, 4) if frame_dim == 2 else (1, 5, c, 3, 4)  # 5 frames: uneven over 2 frame ranks
        x = torch.randn(shape, generator=gen)
        conds = dict(context=torch.randn(2, c, generator=gen), frames=torch.randn(2, *shape[1:], generator=gen))
        model = lambda x, context, frames: toy(x, context, frames, frame_dim)  # noqa: E731
        for (cfg, fr), runner in runners.items():
            mode = f"{'cfg' if cfg else ''}{'+' if cfg and fr else ''}{'frames' if fr else ''}"
            for scale in (3.0, 1.0):  # 1.0: no guidance, the conditional half only
                kw = conds if scale > 1 else {k: v[1:] for k, v in conds.items()}
                wrapped = runner.wrap(model, scale > 1, frame_dim, framed=("frames",))
                res[f"wrap_{mode}_dim{frame_dim}_scale{scale:g}"] = err(guided(wrapped, x, scale, **kw),
                                                                        guided(model, x, scale, **kw))


def check_svd_unet_and_motion_positions(rank, world, res, num_frames, tag=""):
    """SVD's UNet (frame-index embedding, temporal res blocks, temporal mix blocks) and an AnimateDiff-style
    temporal transformer with sinusoidal frame positions, frame-parallel vs single process."""
    from vidcore.models.svd_unet import SVDUNet, SVDUNetConfig
    from vidcore.nn.transformer import TemporalTransformer
    from vidcore.parallel import frame_parallel, shard_frames

    g = dist.group.WORLD
    f = num_frames
    fl = len(range(f)[rank::world])  # frames on this rank (tensor_split sizes)
    unet = randomize(SVDUNet(SVDUNetConfig(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), num_attention_heads=(2, 4),
        cross_attention_dim=16, layers_per_block=1, addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
        num_frames=f)), 6)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, f, 8, 6, 10, generator=gen)
    ctx, ids = torch.randn(2, 1, 16, generator=gen), torch.randn(2, 3, generator=gen)
    with torch.no_grad():
        svd = frames_runner().wrap(lambda x, ctx, ids: unet(x, 20.0, ctx, ids), False, frame_dim=1)
        res[f"svd_unet{tag}"] = err(svd(x, ctx=ctx, ids=ids), unet(x, 20.0, ctx, ids))
        motion = randomize(TemporalTransformer(16, 2, 8, 4, max_positions=12), 7)
        video = torch.randn(2, 16, f, 3, 5, generator=gen)
        folded = lambda v: v.transpose(1, 2).reshape(-1, 16, 3, 5)  # b c f h w -> (b f) c h w  # noqa: E731
        ref = motion(folded(video), f).view(2, f, 16, 3, 5)
        with frame_parallel(g, f):
            got = motion(folded(shard_frames(video, g)), fl).view(2, fl, 16, 3, 5)
        res[f"motion_positions{tag}"] = err(got, shard_frames(ref, g, dim=1))


def check_svd_pipeline(rank, world, res, modes, frames, tag="", windows=None):
    """SVD's sampling loop (per-frame guidance scales, Euler) and chunked temporal-decoder decode; with
    ``windows``, sliding context windows (each window split over the frame ranks)."""
    from vidcore.models.svd_unet import SVDUNet, SVDUNetConfig
    from vidcore.models.svd_vae import AutoencoderKLTemporalDecoder, AutoencoderKLTemporalDecoderConfig
    from vidcore.pipelines.stable_video_diffusion import StableVideoDiffusionPipeline
    from vidcore.schedulers import from_config

    unet = randomize(SVDUNet(SVDUNetConfig(
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), num_attention_heads=(2, 4),
        cross_attention_dim=16, layers_per_block=1, addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
        num_frames=frames)), 8)
    vae = randomize(AutoencoderKLTemporalDecoder(AutoencoderKLTemporalDecoderConfig(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1)), 9)
    scheduler = from_config({"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012,
                             "beta_schedule": "scaled_linear",
                             "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
                             "sigma_max": 700.0, "sigma_min": 0.002, "steps_offset": 1, "timestep_spacing": "leading",
                             "timestep_type": "continuous", "use_karras_sigmas": True, "interpolation_type": "linear"})
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=None, unet=unet, scheduler=scheduler,
                                        feature_extractor=None)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(4)
    latents = torch.randn(1, frames, 4, 6, 6, generator=gen)
    image = torch.randn(1, 1, 4, 6, 6, generator=gen).expand(1, frames, -1, -1, -1)
    image_latents = torch.cat([torch.zeros(1, frames, 4, 6, 6), image])
    embeds = torch.cat([torch.zeros(1, 1, 16), torch.randn(1, 1, 16, generator=gen)])
    ids = torch.randn(1, 3, generator=gen).repeat(2, 1)
    scales = torch.linspace(1.0, 3.0, frames)[None, :, None, None, None]

    def run():
        scheduler.set_timesteps(3)
        out = pipe.denoise(latents * scheduler.init_noise_sigma, scheduler.timesteps, image_latents, embeds, ids,
                           scales, windows=windows)
        return pipe.decode_latents(out, decode_chunk_size=3)  # chunks of 3 frames: uneven over the ranks

    ref = run()
    for cfg, fr in modes:
        pipe.enable_parallel(cfg=cfg, frames=fr)
        got = run()
        key = f"svd_pipeline_{'cfg' if cfg else ''}{'+' if cfg and fr else ''}{'frames' if fr else ''}{tag}"
        res[key] = err(got, ref) if rank == 0 else float(got is not None)
        pipe.disable_parallel()


def check_animatediff(rank, world, res, modes, frames):
    """AnimateDiff (SD1.5-style UNet2D + motion modules with frame positions): one context window, and
    sliding windows (each window split over the ranks; 6 frames in windows of 4: uneven at world 3)."""
    from vidcore.models.motion import MotionAdapter, MotionAdapterConfig
    from vidcore.models.unet2d import UNet2D, UNet2DConfig
    from vidcore.pipelines.animatediff import AnimateDiffPipeline

    t2v = tiny_pipeline()
    unet = randomize(UNet2D(UNet2DConfig(block_out_channels=(16, 32),
                                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                         norm_num_groups=4, cross_attention_dim=12, attention_head_dim=2)), 10)
    adapter = randomize(MotionAdapter(MotionAdapterConfig(block_out_channels=(16, 32), motion_layers_per_block=1,
                                                          motion_norm_num_groups=4, motion_num_attention_heads=2,
                                                          motion_max_seq_length=8, use_motion_mid_block=False)), 11)
    pipe = AnimateDiffPipeline(tokenizer=None, text_encoder=None, unet=unet, vae=t2v.vae, scheduler=t2v.scheduler,
                               motion_adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    ref = run_pipe(pipe, num_frames=frames, eta=0.5)
    for cfg, fr in modes:
        pipe.enable_parallel(cfg=cfg, frames=fr)
        got = run_pipe(pipe, num_frames=frames, eta=0.5)
        key = f"animatediff_{'cfg' if cfg else ''}{'+' if cfg and fr else ''}{'frames' if fr else ''}"
        res[key] = err(got, ref) if rank == 0 else float(got is not None)
        pipe.disable_parallel()
    windows = dict(num_frames=6, context_length=4, context_stride=2, eta=0.5)
    ref = run_pipe(pipe, **windows)
    pipe.enable_parallel(cfg=False, frames=True)
    got = run_pipe(pipe, **windows)
    res["animatediff_windows_frames"] = err(got, ref) if rank == 0 else float(got is not None)
    pipe.disable_parallel()
    scaled = dict(windows, motion_scale=[0.0, 0.5, 1.0, 1.5, 2.0, 0.5])  # each rank takes its frames' scales
    ref = run_pipe(pipe, **scaled)
    pipe.enable_parallel(cfg=False, frames=True)
    got = run_pipe(pipe, **scaled)
    res["animatediff_motion_scale_frames"] = err(got, ref) if rank == 0 else float(got is not None)
    try:  # windows shorter than the frame group
        run_pipe(pipe, num_frames=6, context_length=world - 1, context_stride=1)
        res["animatediff_short_windows_message"] = ""
    except ValueError as e:
        res["animatediff_short_windows_message"] = str(e)
    pipe.disable_parallel()


def run_pipe(pipe, **kw):
    gen = torch.Generator().manual_seed(7)
    cond = torch.randn(1, 5, 12, generator=gen)
    uncond = torch.randn(1, 5, 12, generator=gen)
    return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, height=16, width=16, num_inference_steps=2,
                generator=torch.Generator().manual_seed(11), output_type="pt", **kw).frames


def check_pipeline(rank, world, res, modes, num_frames, tag=""):
    pipe = tiny_pipeline()
    ref = run_pipe(pipe, num_frames=num_frames, eta=0.5)
    for cfg, frames in modes:
        pipe.enable_parallel(cfg=cfg, frames=frames)
        got = run_pipe(pipe, num_frames=num_frames, eta=0.5)
        key = f"pipeline_{'cfg' if cfg else ''}{'+' if cfg and frames else ''}{'frames' if frames else ''}{tag}"
        res[key] = err(got, ref) if rank == 0 else float(got is not None)
        pipe.disable_parallel()


def check_guidance_batching(rank, world, res):
    """set_guidance_batching("split") under enable_parallel: frame parallel runs each branch split over the frame
    ranks; CFG parallel already runs one branch per rank. Both equal the joint single-process run."""
    pipe = tiny_pipeline()
    ref = run_pipe(pipe, num_frames=world, eta=0.5)
    pipe.set_guidance_batching("split")
    for cfg, frames in ((False, True), (True, False)):
        pipe.enable_parallel(cfg=cfg, frames=frames)
        got = run_pipe(pipe, num_frames=world, eta=0.5)
        res[f"split_guidance_{'cfg' if cfg else 'frames'}"] = err(got, ref) if rank == 0 else float(got is not None)
        pipe.disable_parallel()


def check_pipeline_windows(rank, world, res):
    """ModelScope text-to-video with sliding context windows: each window split over the frame ranks, or its
    CFG halves on two ranks."""
    windows = dict(num_frames=6, context_length=4, context_stride=2, eta=0.5)
    pipe = tiny_pipeline()
    ref = run_pipe(pipe, **windows)
    for cfg, frames in ((False, True), (True, False)):
        pipe.enable_parallel(cfg=cfg, frames=frames)
        got = run_pipe(pipe, **windows)
        res[f"pipeline_windows_{'cfg' if cfg else 'frames'}"] = err(got, ref) if rank == 0 else float(got is not None)
        pipe.disable_parallel()
    pipe.enable_parallel(cfg=False, frames=True)
    try:
        run_pipe(pipe, num_frames=6, context_length=1, context_stride=1)
        res["pipeline_short_windows_message"] = ""
    except ValueError as e:
        res["pipeline_short_windows_message"] = str(e)
    pipe.disable_parallel()


def check_video_to_video(rank, world, res):
    from vidcore.pipelines.video_to_video import VideoToVideoPipeline

    t2v = tiny_pipeline()
    pipe = VideoToVideoPipeline(**{name: getattr(t2v, name) for name in VideoToVideoPipeline.component_names})
    pipe.set_progress_bar_config(disable=True)
    video = torch.rand(2 * world, 3, 16, 16, generator=torch.Generator().manual_seed(3))  # f 3 h w in [0, 1]
    gen = torch.Generator().manual_seed(7)
    embeds = dict(prompt_embeds=torch.randn(1, 5, 12, generator=gen),
                  negative_prompt_embeds=torch.randn(1, 5, 12, generator=gen))
    run = lambda: pipe(video=video, strength=0.8, num_inference_steps=3, output_type="pt",  # noqa: E731
                       generator=torch.Generator().manual_seed(5), **embeds).frames
    ref = run()
    pipe.enable_parallel(cfg=False, frames=True)
    got = run()
    res["video_to_video_frames"] = err(got, ref) if rank == 0 else float(got is not None)


def check_deep_cache(rank, world, res):
    """DeepCache under enable_parallel: each rank caches its own frame slice (or CFG half); equal to the cached
    single-process run. The block cache refuses frame parallelism."""
    pipe = tiny_pipeline()
    pipe.enable_deep_cache(cache_interval=2, cache_branch_id=0)
    ref = run_pipe(pipe, num_frames=4)
    res["deep_cache_stats"] = pipe.cache_stats()["cached"]
    for cfg, frames in ((False, True), (True, False)):
        pipe.enable_parallel(cfg=cfg, frames=frames)
        got = run_pipe(pipe, num_frames=4)
        res[f"deep_cache_{'cfg' if cfg else 'frames'}"] = err(got, ref) if rank == 0 else float(got is not None)
        pipe.disable_parallel()
    pipe.enable_parallel(cfg=False, frames=True)
    try:
        pipe.enable_block_cache(threshold=0.1)
        res["block_cache_frames_error"] = ""
    except ValueError as e:
        res["block_cache_frames_error"] = str(e)
    pipe.disable_parallel()


def check_config_errors(rank, world, res):
    from vidcore.parallel import ParallelConfig

    for name, kw in (("cfg_only", dict(cfg=True, frames=False)), ("cfg_frames", dict(cfg=True, frames=True)),
                     ("neither", dict(cfg=False, frames=False))):
        try:
            ParallelConfig.create(**kw)
            res[f"config_error_{name}"] = ""
        except ValueError as e:
            res[f"config_error_{name}"] = str(e)


def check_bad_frames(rank, world, res):
    pipe = tiny_pipeline()
    pipe.enable_parallel(cfg=False, frames=True)
    try:
        run_pipe(pipe, num_frames=world - 1)
        res["bad_frames_message"] = ""
    except ValueError as e:
        res["bad_frames_message"] = str(e)


def scenario(rank, world):
    res = {}
    torch.set_num_threads(1)
    if world in (2, 3):
        check_primitives(rank, world, res)
        check_unet(rank, world, res, num_frames=2 * world if world == 2 else world)
        check_unet(rank, world, res, num_frames=world + 1, tag="_uneven")
        check_svd_unet_and_motion_positions(rank, world, res, num_frames=2 * world if world == 2 else world)
        check_svd_unet_and_motion_positions(rank, world, res, num_frames=world + 2, tag="_uneven")
        check_pipeline(rank, world, res, [(False, True)] + ([(True, False)] if world == 2 else []), num_frames=world)
        check_pipeline(rank, world, res, [(False, True)], num_frames=world + 1, tag="_uneven")
        check_bad_frames(rank, world, res)
    if world == 2:
        check_wrap(rank, world, res, [(False, True), (True, False)])
        check_video_to_video(rank, world, res)
        check_svd_pipeline(rank, world, res, [(False, True), (True, False)], frames=4)
        check_svd_pipeline(rank, world, res, [(False, True)], frames=5, tag="_uneven")
        check_svd_pipeline(rank, world, res, [(False, True)], frames=5, tag="_windows", windows=[(0, 3), (2, 5)])
        check_pipeline_windows(rank, world, res)
        check_guidance_batching(rank, world, res)
        check_animatediff(rank, world, res, [(False, True), (True, False)], frames=4)
        check_deep_cache(rank, world, res)
    if world == 3:
        check_config_errors(rank, world, res)
        check_animatediff(rank, world, res, [], frames=4)
    if world == 4:
        check_wrap(rank, world, res, [(True, True)])
        check_pipeline(rank, world, res, [(True, True)], num_frames=4)
        check_pipeline(rank, world, res, [(True, True)], num_frames=5, tag="_uneven")
        check_svd_pipeline(rank, world, res, [(True, True)], frames=4)
    return res


def _worker(rank, world, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        res = scenario(rank, world)
    except Exception:
        res = {"error": traceback.format_exc()}
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as fh:
        json.dump(res, fh)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cache = {}

    def get(world):
        if world not in cache:
            out = tmp_path_factory.mktemp(f"world{world}")
            mp.spawn(_worker, args=(world, free_port(), str(out)), nprocs=world)
            cache[world] = [json.load(open(out / f"{r}.json")) for r in range(world)]
            errors = [f"rank {r}: {res['error']}" for r, res in enumerate(cache[world]) if "error" in res]
            assert not errors, "\n".join(errors)
        return cache[world]

    return get


PRIMITIVES = ["frames_to_pixels_n7", "pixels_to_frames_n7", "frames_to_pixels_nW", "pixels_to_frames_nW", "gather",
              "frame_conv", "group_norm", "temporal_attend_n9", "temporal_attend_n1",
              "handler_removed"]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("tag", ["", "_uneven"])
def test_primitives_equal_single_process(results, world, tag):
    for r, res in enumerate(results(world)):
        for key in PRIMITIVES:
            assert res[key + tag] <= TOL, (world, r, key + tag, res[key + tag])


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("tag", ["", "_uneven"])
def test_frame_parallel_unet3d_equals_single_process(results, world, tag):
    for r, res in enumerate(results(world)):
        for name in UNET_CASES:
            assert res[f"unet_{name}{tag}"] < TOL, (world, r, name, res[f"unet_{name}{tag}"])


@pytest.mark.parametrize("world,modes", [(2, ["frames", "cfg"]), (4, ["cfg+frames"])])
def test_wrap_splits_any_model_by_data_alone(results, world, modes):
    """One wrapper for every family: only the frame axis and the framed inputs are given."""
    for r, res in enumerate(results(world)):
        for mode in modes:
            for key in (f"wrap_{mode}_dim{d}_scale{s}" for d in (2, 1) for s in ("3", "1")):
                assert res[key] < TOL, (world, r, key, res[key])


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("tag", ["", "_uneven"])
def test_frame_parallel_svd_unet_and_frame_positions_equal_single_process(results, world, tag):
    for r, res in enumerate(results(world)):
        assert res["svd_unet" + tag] < TOL, (world, r, res["svd_unet" + tag])
        assert res["motion_positions" + tag] < TOL, (world, r, res["motion_positions" + tag])


@pytest.mark.parametrize("world,keys", [(2, ["pipeline_frames", "pipeline_cfg", "pipeline_frames_uneven"]),
                                        (3, ["pipeline_frames", "pipeline_frames_uneven"]),
                                        (4, ["pipeline_cfg+frames", "pipeline_cfg+frames_uneven"])])
def test_parallel_pipeline_equals_single_process(results, world, keys):
    res = results(world)
    for key in keys:
        assert res[0][key] < 3e-5, (world, key, res[0][key])
        assert all(other[key] == 0.0 for other in res[1:]), "only rank 0 receives the video"


def test_deep_cache_under_parallel_equals_the_cached_single_process_run(results):
    res = results(2)
    assert res[0]["deep_cache_stats"] > 0
    for key in ("deep_cache_frames", "deep_cache_cfg"):
        assert res[0][key] < 3e-5, (key, res[0][key])
        assert res[1][key] == 0.0
    assert all("frame-parallel" in r["block_cache_frames_error"] for r in res)


def test_frame_parallel_video_to_video_equals_single_process(results):
    res = results(2)
    assert res[0]["video_to_video_frames"] < 3e-5
    assert res[1]["video_to_video_frames"] == 0.0


@pytest.mark.parametrize("world,keys", [(2, ["svd_pipeline_frames", "svd_pipeline_cfg", "svd_pipeline_frames_uneven"]),
                                        (4, ["svd_pipeline_cfg+frames"])])
def test_parallel_svd_sampling_and_decode_equal_single_process(results, world, keys):
    res = results(world)
    for key in keys:
        assert res[0][key] < 3e-5, (world, key, res[0][key])
        assert all(other[key] == 0.0 for other in res[1:]), "only rank 0 receives the video"


def test_parallel_animatediff_equals_single_process(results):
    res = results(2)
    for key in ("animatediff_frames", "animatediff_cfg", "animatediff_windows_frames"):
        assert res[0][key] < 3e-5, (key, res[0][key])
        assert res[1][key] == 0.0


def test_split_guidance_batching_composes_with_parallel(results):
    for r, res in enumerate(results(2)):
        for key in ("split_guidance_frames", "split_guidance_cfg"):
            assert res[key] < TOL, (r, key, res[key])


def test_parallel_context_windows_equal_single_process(results):
    """Sliding context windows compose with enable_parallel: ModelScope (frames or CFG), SVD (frames) and
    AnimateDiff with a per-frame motion scale (frames); windows shorter than the frame group are refused."""
    res = results(2)
    for key in ("pipeline_windows_frames", "pipeline_windows_cfg", "svd_pipeline_frames_windows",
                "animatediff_motion_scale_frames"):
        assert res[0][key] < 3e-5, (key, res[0][key])
        assert res[1][key] == 0.0, "only rank 0 receives the video"
    for r in res:
        assert "needs context_length >= 2, got 1" in r["pipeline_short_windows_message"], r


def test_parallel_animatediff_sliding_windows_split_unevenly(results):
    res = results(3)  # windows of 4 frames over 3 ranks: 2 + 1 + 1
    for key in ("animatediff_windows_frames", "animatediff_motion_scale_frames"):
        assert res[0][key] < 3e-5, (key, res[0][key])
        assert all(r[key] == 0.0 for r in res[1:])
    for r in res:
        assert "needs context_length >= 3, got 2" in r["animatediff_short_windows_message"], r


def test_parallel_animatediff_short_windows_are_a_clear_error(results):
    for r in results(2):
        assert "needs context_length >= 2, got 1" in r["animatediff_short_windows_message"], r


def test_world_size_that_does_not_fit_is_a_clear_error(results):
    for res in results(3):
        assert "exactly 2 processes, got world size 3" in res["config_error_cfg_only"]
        assert "even world size" in res["config_error_cfg_frames"]
        assert "choose cfg=True, frames=True or both" in res["config_error_neither"]


@pytest.mark.parametrize("world", [2, 3])
def test_fewer_frames_than_processes_is_a_clear_error(results, world):
    for res in results(world):
        msg = res["bad_frames_message"]
        assert f"needs at least {world} frames" in msg and f"num_frames={world - 1}" in msg, msg


def _i2vgen_worker(rank, world, port, folder, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    res = {}
    try:
        import numpy as np
        import PIL.Image

        import vidcore

        torch.set_num_threads(1)
        pipe = vidcore.I2VGenXLPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        image = PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 52, 3), dtype=np.uint8))

        def run(frames, global_seed):
            torch.manual_seed(global_seed)  # the image's posterior sample comes from the global RNG (diffusers' way)
            return pipe("a cat", image=image, height=16, width=24, num_frames=frames, num_inference_steps=2,
                        negative_prompt="ugly", eta=0.5, clip_skip=None, output_type="pt",
                        generator=torch.Generator().manual_seed(3)).frames

        for frames in (4, 3):  # 3 frames over 2 ranks: 2 + 1
            ref = run(frames, 5)
            for cfg, fr in ((False, True), (True, False)):
                pipe.enable_parallel(cfg=cfg, frames=fr)
                got = run(frames, 5 if rank == 0 else 50 + rank)  # rank 0's image latents are broadcast
                key = f"i2vgen_{'cfg' if cfg else ''}{'+' if cfg and fr else ''}{'frames' if fr else ''}_{frames}"
                res[key] = err(got, ref) if rank == 0 else float(got is not None)
                pipe.disable_parallel()
        windows = dict(context_length=3, context_stride=2)  # 5 frames: windows (0, 3), (2, 5)
        torch.manual_seed(5)
        ref = pipe("a cat", image=image, height=16, width=24, num_frames=5, num_inference_steps=2, clip_skip=None,
                   output_type="pt", generator=torch.Generator().manual_seed(3), **windows).frames
        pipe.enable_parallel(cfg=False, frames=True)
        torch.manual_seed(5)
        got = pipe("a cat", image=image, height=16, width=24, num_frames=5, num_inference_steps=2, clip_skip=None,
                   output_type="pt", generator=torch.Generator().manual_seed(3), **windows).frames
        res["i2vgen_windows_frames"] = err(got, ref) if rank == 0 else float(got is not None)
        pipe.disable_parallel()
    except Exception:
        res = {"error": traceback.format_exc()}
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as fh:
        json.dump(res, fh)
    dist.destroy_process_group()


def test_parallel_i2vgen_equals_single_process(tmp_path):
    """I2VGen-XL: the image conditioning is computed whole on every rank, the backbone on frame slices."""
    import tiny

    folder = tmp_path / "tiny-i2vgen"
    tiny.build_tiny_i2vgen_pipeline(folder)
    mp.spawn(_i2vgen_worker, args=(2, free_port(), str(folder), str(tmp_path)), nprocs=2)
    res = [json.load(open(tmp_path / f"{r}.json")) for r in range(2)]
    assert not any("error" in r for r in res), [r.get("error") for r in res]
    for key in ("i2vgen_frames_4", "i2vgen_cfg_4", "i2vgen_frames_3", "i2vgen_cfg_3", "i2vgen_windows_frames"):
        assert res[0][key] < 3e-5, (key, res[0][key])
        assert res[1][key] == 0.0, "only rank 0 receives the video"


def test_pipelines_without_parallel_sampling_refuse_enable_parallel():
    """Pipelines that do not compose ParallelPipelineMixin refuse it with UnsupportedFeatureError, which is a
    NotImplementedError as the refusal it replaced was."""
    from vidcore.pipelines.text2video_zero import TextToVideoZeroPipeline

    for cls in (TextToVideoZeroPipeline,):
        pipe = cls.__new__(cls)  # no components needed: the check comes first
        with pytest.raises(NotImplementedError, match=f"{cls.__name__} has no multi-GPU"):
            pipe.enable_parallel(cfg=True, frames=False)
    assert not dist.is_initialized()


def test_config_errors_without_a_process_group():
    from vidcore.parallel import ParallelConfig, init_distributed

    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="not initialised"):
        ParallelConfig.create(cfg=True, frames=False)
    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in os.environ}
    try:
        with pytest.raises(RuntimeError, match="torchrun"):
            init_distributed(device="cpu")
    finally:
        os.environ.update(env)


# ----------------------------------------------------------------------------- CLI under a torchrun-like environment


def _cli_worker(rank, world, port, argvs, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from vidcore.cli import main

    codes = []
    for argv in argvs:
        try:
            codes.append(main(argv))
        except SystemExit as e:  # argparse
            codes.append(e.code)
        if dist.is_initialized():  # the failing call stops before destroying its group
            dist.destroy_process_group()
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as fh:
        json.dump(codes, fh)


def _gif_frames(path):
    import numpy as np
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return np.stack([np.asarray(f.convert("RGB"), dtype=np.int16) for f in ImageSequence.Iterator(im)])


def test_cli_parallel_frames_writes_the_single_process_video_on_rank_0(tmp_path, capsys):
    from vidcore.cli import main
    from vidcore.tools.random_model import make_random_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: tiny convs slow down a lot with threads on a busy 2-core box
    try:
        _run_cli_test(tmp_path, capsys, main, make_random_pipeline)
    finally:
        torch.set_num_threads(threads)


def _run_cli_test(tmp_path, capsys, main, make_random_pipeline):
    model = make_random_pipeline(tmp_path / "model", "tiny")
    base = ["generate", "text-to-video", "--model", str(model), "--prompt", "a red fox", "--frames", "4",
            "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu", "--no-progress"]
    assert main(base + ["-o", str(tmp_path / "single.gif")]) == 0
    # without torchrun's environment: a usage error that names torchrun
    assert main(base + ["-o", str(tmp_path / "x.gif"), "--parallel", "frames"]) == 2
    assert "torchrun" in capsys.readouterr().err
    os.environ["WORLD_SIZE"] = "2"  # as under torchrun; the guidance check comes before any process group
    try:
        assert main(base + ["-o", str(tmp_path / "x.gif"), "--parallel", "cfg", "--guidance", "1.0"]) == 2
    finally:
        del os.environ["WORLD_SIZE"]
    assert "needs --guidance > 1, got 1.0" in capsys.readouterr().err
    assert not dist.is_initialized()
    argvs = [base + ["-o", str(tmp_path / "parallel.gif"), "--parallel", "frames"],
             base[:7] + ["1"] + base[8:] + ["-o", str(tmp_path / "bad.gif"), "--parallel", "frames"]]
    mp.spawn(_cli_worker, args=(2, free_port(), argvs, str(tmp_path)), nprocs=2)
    codes = [json.load(open(tmp_path / f"{r}.json")) for r in range(2)]
    assert codes == [[0, 2]] * 2  # 1 frame over 2 ranks: usage error on every rank, before any work
    assert not (tmp_path / "bad.gif").exists()
    single, parallel = _gif_frames(tmp_path / "single.gif"), _gif_frames(tmp_path / "parallel.gif")
    assert single.shape == parallel.shape == (4, 32, 32, 3)
    assert abs(single - parallel).max() <= 2  # float32 rounding may move a value across a uint8/palette step
