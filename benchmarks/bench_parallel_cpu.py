"""Scaling of vidcore.parallel (CFG / frame parallel UNet3D denoising steps) on CPU with gloo, plus the
communication-vs-compute arithmetic at real sizes (ModelScope/Zeroscope, SVD-XT) on the meta device.

Part 1 (measured): a reduced random UNet3D, one denoising step with classifier-free guidance (the
UNet on the [uncond; cond] batch, the guided noise gathered on every rank), run single-process and
with ``frames``, ``cfg`` and ``cfg+frames`` over spawned gloo process groups (one torch thread per
rank). Reports the median step time, each rank's peak RSS (whole process: Python, torch, the model,
activations, communication buffers) and the bytes each rank sends per step, counted at the
torch.distributed calls. Every parallel result is checked against the single-process step.

Part 2 (arithmetic, no communication): the real UNets built on the meta device run with a handler
that gives each frame-mixing op the shapes a rank would see and records the bytes it would send
(all-to-all of q|k|v and of the attention output, halo frames, GroupNorm statistics); FLOPs per
rank come from torch.utils.flop_counter. Both per UNet forward on the CFG batch (b = 2), fp16.

    /work/venv/bin/python benchmarks/bench_parallel_cpu.py                  # both parts
    /work/venv/bin/python benchmarks/bench_parallel_cpu.py --part 2
    /work/venv/bin/python benchmarks/bench_parallel_cpu.py --frames 8 --size 16 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_repo_paths, print_machine, table  # noqa: E402

add_repo_paths()

MODES = [("single", 1, False, False), ("frames", 2, False, True), ("cfg", 2, True, False),
         ("frames", 4, False, True), ("cfg+frames", 4, True, True)]
REDUCED = dict(block_out_channels=(64, 128, 128), down_block_types=("CrossAttnDownBlock3D",) * 2 + ("DownBlock3D",),
               up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 2, layers_per_block=1, norm_num_groups=16,
               cross_attention_dim=64, attention_head_dim=32)


# ----------------------------------------------------------------------------- part 1: measured


class SentBytes:
    """Counts the bytes this rank hands to torch.distributed (sends, not receives)."""

    def __init__(self):
        import torch.distributed as dist

        self.total = 0
        self.dist = dist
        self.saved = {}
        for name in ("all_to_all_single", "all_gather", "gather", "broadcast", "batch_isend_irecv"):
            self.saved[name] = getattr(dist, name)
            setattr(dist, name, self._wrap(name, self.saved[name]))

    def _wrap(self, name, fn):
        def counted(*args, **kwargs):
            world = self.dist.get_world_size(kwargs.get("group"))
            if name == "all_to_all_single":  # everything but the own slice leaves
                t, splits = args[1], args[3] if len(args) > 3 else kwargs.get("input_split_sizes")
                mine = splits[self.dist.get_rank(kwargs.get("group"))] if splits else t.numel() // world
                self.total += (t.numel() - mine) * t.element_size()
            elif name == "all_gather":  # ring: each rank forwards W - 1 slices
                t = args[1]
                self.total += (world - 1) * t.numel() * t.element_size()
            elif name in ("gather", "broadcast"):
                t = args[0]
                src = kwargs.get("dst", kwargs.get("src", 0))
                if (name == "gather") != (self.dist.get_rank() == src):
                    self.total += t.numel() * t.element_size() * (1 if name == "gather" else world - 1)
            else:
                sends = [op.tensor for op in args[0] if op.op is self.dist.isend]
                self.total += sum(t.numel() * t.element_size() for t in sends)
            return fn(*args, **kwargs)

        return counted


def _worker(rank, world, port, cfg, frames, args, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from test_parallel import randomize
    from vidcore.models.unet3d import UNet3D, UNet3DConfig
    from vidcore.parallel import ParallelConfig, ParallelRunner

    unet = randomize(UNet3D(UNet3DConfig(**REDUCED)), 0)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, args.frames, args.size, args.size, generator=g)
    embeds = torch.randn(2, 7, REDUCED["cross_attention_dim"], generator=g)
    runner = ParallelRunner(ParallelConfig.create(cfg=cfg, frames=frames)) if world > 1 else None

    def step():
        with torch.no_grad():
            if runner is not None:
                return runner.predict_noise(unet, latents, 500, embeds, 9.0)
            uncond, cond = unet(torch.cat([latents] * 2), 500, embeds).chunk(2)
            return uncond + 9.0 * (cond - uncond)

    out = step()  # warm-up
    counter = SentBytes() if world > 1 else None
    times = []
    for _ in range(args.steps):
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sent = counter.total / args.steps if counter else 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if rank == 0:
        torch.save(out, os.path.join(out_dir, "out.pt"))
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as fh:
        json.dump({"ms": 1000 * statistics.median(times), "peak_mib": peak / 1024, "sent": sent}, fh)
    if world > 1:
        dist.destroy_process_group()


def part1(args) -> None:
    import torch.multiprocessing as mp

    print(f"\n## Part 1: one guided denoising step, reduced UNet3D {REDUCED['block_out_channels']}, "
          f"{args.frames} frames, {args.size}x{args.size} latents, fp32, gloo, 1 thread per rank "
          f"(median of {args.steps})\n")
    rows, reference = [], None
    for name, world, cfg, frames in MODES:
        if frames and args.frames % (world // (2 if cfg else 1)):
            continue
        with tempfile.TemporaryDirectory() as out:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(_worker, args=(world, port, cfg, frames, args, out), nprocs=world)
            res = [json.load(open(os.path.join(out, f"{r}.json"))) for r in range(world)]
            got = torch.load(os.path.join(out, "out.pt"))
        reference = got if reference is None else reference
        err = ((got - reference).abs().max() / reference.abs().max()).item()
        rows.append((f"{name} x{world}", f"{max(r['ms'] for r in res):.0f}",
                     " / ".join(f"{r['peak_mib']:.0f}" for r in res),
                     " / ".join(f"{r['sent'] / 2**20:.2f}" for r in res), f"{err:.1e}"))
    print(table(rows, ("mode x ranks", "step ms (slowest rank)", "peak RSS MiB per rank",
                       "MiB sent per step per rank", "max rel. diff vs single")))


# ----------------------------------------------------------------------------- part 2: arithmetic


class VolumeHandler:
    """A frame handler for meta tensors: each op gets the shapes a rank of ``world`` sees, no
    communication, and the bytes it would send are summed (interior rank: two halo neighbours)."""

    def __init__(self, world: int):
        self.world, self.sent = world, {"all-to-all": 0, "halo": 0, "norm stats": 0}

    def temporal_attend(self, q, k, v, num_frames, heads, backend=None):
        from vidcore.nn.attention import local_temporal_attend

        w, (bf, n, c) = self.world, q.shape
        n_local = -(-n // w)
        self.sent["all-to-all"] += 4 * bf * n * c * q.element_size() * (w - 1) // w  # q|k|v in, output back
        sharded = torch.empty(bf * w, n_local, c, device=q.device, dtype=q.dtype)
        local_temporal_attend(sharded, sharded, sharded, num_frames * w, heads, "math")
        return torch.empty_like(q)

    def frame_conv(self, conv, x):
        from vidcore.parallel.comm import frame_conv

        b, c, f, h, w = x.shape
        self.sent["halo"] += 2 * b * c * h * w * x.element_size() if self.world > 1 else 0
        return frame_conv(conv, x, None)

    def group_norm(self, norm, x):
        self.sent["norm stats"] += 3 * x.shape[0] * norm.num_groups * 4 * (self.world - 1)
        return norm(x)


def count(model, inputs, world: int):
    from torch.utils.flop_counter import FlopCounterMode

    from vidcore.nn.attention import attention_backend
    from vidcore.nn.frame_hooks import use_frame_handler

    handler = VolumeHandler(world)
    with torch.no_grad(), attention_backend("math"), use_frame_handler(handler), \
            FlopCounterMode(display=False) as flops:
        model(*inputs)
    return flops.get_total_flops(), handler.sent


def part2(args) -> None:
    from conversion.maps.original_svd import SVD_XT_UNET_CONFIG
    from vidcore.models.svd_unet import SVDUNet, SVDUNetConfig
    from vidcore.models.unet3d import UNet3D, UNet3DConfig

    modelscope = {"attention_head_dim": 64, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
                  "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"], "layers_per_block": 2,
                  "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3}
    dt = torch.float16
    with torch.device("meta"):
        ms = UNet3D(UNet3DConfig.from_diffusers_config(modelscope)).to(dt)
        svd = SVDUNet(SVDUNetConfig.from_diffusers_config(SVD_XT_UNET_CONFIG)).to(dt)
    cases = [("Zeroscope 576x320", ms, 24, (2, 4, 8),
              lambda f_l: (torch.empty(2, 4, f_l, 40, 72, device="meta", dtype=dt), 500,
                           torch.empty(2, 77, 1024, device="meta", dtype=dt))),
             ("SVD-XT 1024x576", svd, 25, (5,),
              lambda f_l: (torch.empty(2, f_l, 8, 72, 128, device="meta", dtype=dt), 500,
                           torch.empty(2, 1, 1024, device="meta", dtype=dt),
                           torch.empty(2, 3, device="meta", dtype=dt))),
             ("SVD 1024x576, 14 frames", svd, 14, (2, 7),
              lambda f_l: (torch.empty(2, f_l, 8, 72, 128, device="meta", dtype=dt), 500,
                           torch.empty(2, 1, 1024, device="meta", dtype=dt),
                           torch.empty(2, 3, device="meta", dtype=dt)))]
    print("\n## Part 2: per UNet forward on the CFG batch (b = 2), fp16, frames split over W ranks "
          f"(bytes sent by an interior rank; time at {args.tflops:g} TFLOP/s achieved and "
          f"{args.link_gbs:g} GB/s per link, no overlap)\n")
    rows = []
    for name, model, frames, worlds, make in cases:
        single, _ = count(model, make(frames), 1)
        for w in worlds:
            flops, sent = count(model, make(frames // w), w)
            total = sum(sent.values())
            t_compute, t_comm = flops / (args.tflops * 1e12), total / (args.link_gbs * 1e9)
            rows.append((name, frames, w, f"{single / 1e12:.1f}", f"{flops / 1e12:.2f}",
                         f"{sent['all-to-all'] / 2**20:.0f}", f"{sent['halo'] / 2**20:.0f}",
                         f"{sent['norm stats'] / 2**10:.0f} KiB", f"{flops / max(total, 1):.0f}",
                         f"{1000 * t_compute:.0f}", f"{1000 * t_comm:.1f}"))
    print(table(rows, ("model", "frames", "W", "TFLOP (1 rank)", "TFLOP per rank", "all-to-all MiB", "halo MiB",
                       "norm stats", "FLOP per byte sent", "compute ms", "comm ms")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("1", "2", "both"), default="both")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=16, help="latent height and width")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--tflops", type=float, default=300.0, help="assumed achieved fp16 TFLOP/s per GPU (part 2)")
    p.add_argument("--link-gbs", type=float, default=150.0, help="assumed GB/s each rank can send (part 2)")
    args = p.parse_args()
    print_machine()
    if args.part in ("1", "both"):
        part1(args)
    if args.part in ("2", "both"):
        part2(args)


if __name__ == "__main__":
    main()
