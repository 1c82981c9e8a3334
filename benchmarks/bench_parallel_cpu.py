"""Scaling of vidcore.parallel (CFG / frame parallel UNet3D denoising steps) on CPU with gloo, plus the
communication-vs-compute arithmetic at real sizes (ModelScope/Zeroscope, SVD-XT) on the meta device.

Part 1 (measured): a reduced random UNet3D, one denoising step with classifier-free guidance (the
UNet on the [uncond; cond] batch, the guided noise gathered on every rank), run single-process and
with ``frames``, ``cfg`` and ``cfg+frames`` over spawned gloo process groups (one torch thread per
rank). Reports the median step time, each rank's peak RSS (whole process: Python, torch, the model,
activations, communication buffers) and the bytes each rank sends per step, counted at the
torch.distributed calls. Every parallel result is checked against the single-process step.

Part 2 (arithmetic, no communication): the real UNets built on the meta device run rank 0's slice of
the frames (split as torch.tensor_split: rank 0 holds the largest slice) through the real frame
handler (vidcore.parallel.frames.FrameShardHandler) with a stand-in for torch.distributed that sends
nothing and records the bytes each call would send (all-to-all of q|k|v and of the attention output,
halo frames, GroupNorm statistics); FLOPs per rank come from torch.utils.flop_counter (math
attention), peak activation bytes per rank from LiveBytes (a TorchDispatchMode that tracks the live
storages created during the forward; weights and inputs are not counted; attention allocated as a
fused SDPA kernel would, without the score matrix). All per UNet forward on the CFG batch (b = 2),
fp16; W = 1 is the plain forward with no handler. LiveBytes is checked first against a chain of ops
with a known peak and against real CPU tensors for a reduced UNet3D.

    /work/venv/bin/python benchmarks/bench_parallel_cpu.py                  # both parts
    /work/venv/bin/python benchmarks/bench_parallel_cpu.py --part 2
    /work/venv/bin/python benchmarks/bench_parallel_cpu.py --part 2 --models svd
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
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

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
    from vidcore.sampling.guidance import guided

    unet = randomize(UNet3D(UNet3DConfig(**REDUCED)), 0)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, args.frames, args.size, args.size, generator=g)
    embeds = torch.randn(2, 7, REDUCED["cross_attention_dim"], generator=g)
    runner = ParallelRunner(ParallelConfig.create(cfg=cfg, frames=frames)) if world > 1 else None

    def model(x, embeds):
        return unet(x, 500, embeds)

    if runner is not None:
        model = runner.wrap(model, True, frame_dim=2)

    def step():
        with torch.no_grad():
            return guided(model, latents, 9.0, embeds=embeds)

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


class FakeDist:
    """Stands in for ``torch.distributed`` inside ``vidcore.parallel.comm`` on meta tensors: rank ``rank`` of a
    group of ``world``, no communication (receive buffers keep their allocated, meta, contents), and the bytes
    this rank would send are summed per kind (all-to-all: all but the own split; all_gather: W - 1 copies, ring;
    halo: the isends of the point-to-point exchange)."""

    isend, irecv = "isend", "irecv"

    class P2POp:
        def __init__(self, op, tensor, peer, group=None):
            self.op, self.tensor, self.peer = op, tensor, peer

    def __init__(self, world: int, rank: int = 0):
        self.world, self.rank = world, rank
        self.sent = {"all-to-all": 0, "halo": 0, "norm stats": 0}

    def get_world_size(self, group=None):
        return self.world

    def get_rank(self, group=None):
        return self.rank

    def get_global_rank(self, group, r):
        return r

    def all_to_all_single(self, out, inp, output_split_sizes=None, input_split_sizes=None, group=None):
        mine = input_split_sizes[self.rank] if input_split_sizes else inp.numel() // self.world
        self.sent["all-to-all"] += (inp.numel() - mine) * inp.element_size()

    def all_gather(self, parts, t, group=None):
        self.sent["norm stats"] += (self.world - 1) * t.numel() * t.element_size()

    def batch_isend_irecv(self, ops):
        self.sent["halo"] += sum(op.tensor.numel() * op.tensor.element_size() for op in ops if op.op == self.isend)
        return []


@contextmanager
def meta_rank(world: int, num_frames: int):
    """The real ``FrameShardHandler`` (as ``frame_parallel`` installs it) for rank 0 of ``world`` (the largest
    slice when ``num_frames % world``), with :class:`FakeDist` in place of ``torch.distributed``. Yields the
    FakeDist (its ``sent``); world 1: no handler (the plain single-process forward)."""
    from vidcore.nn.frame_hooks import use_frame_handler
    from vidcore.parallel import comm
    from vidcore.parallel.frames import FrameShardHandler

    fake, saved = FakeDist(world), comm.dist
    comm.dist = fake
    try:
        with use_frame_handler(FrameShardHandler(object(), num_frames) if world > 1 else None):
            yield fake
    finally:
        comm.dist = saved


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors created while the mode is active (activations; weights and inputs made
    before it are not counted). Every tensor output of every aten op is keyed by its storage: the storage's
    nbytes are added when a new storage first appears and subtracted when the last tensor object seen on
    it is freed (views and in-place results of tracked storages add references; those of storages made
    before the mode are ignored). Works on meta tensors (the storage identity is
    ``untyped_storage()._cdata``; meta data_ptr is 0)."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.refs = 0, 0, {}

    def _drop(self, key):
        self.refs[key][0] -= 1
        if self.refs[key][0] == 0:
            self.live -= self.refs.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self.refs:
                self.refs[key][0] += 1
            elif key in inputs:  # a view or in-place result of a weight/input made before the mode
                continue
            else:
                self.refs[key] = [1, storage.nbytes()]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._drop, key)
        return out


def _check_live_bytes() -> None:
    """LiveBytes on a chain whose answer is known: the peak is 3 N float32 values, and nothing is left."""
    n = 1000
    for device in ("meta", "cpu"):
        x = torch.zeros(n, device=device)
        with LiveBytes() as mem:
            a = x + 1  # N live
            b = a * 2  # 2N
            del a  # N
            b.add_(1)  # in-place: no new storage
            v = b.view(10, 100)  # a view: no new storage
            x.mul_(1)  # in-place on an input: not counted
            c = torch.cat([v, v])  # N + 2N = 3N (the peak)
            del b, v  # 2N (c)
            d = c[:5].half()  # 2N + 500 float16 values
            del c, d
        assert mem.peak == 3 * n * 4 and mem.live == 0, (device, mem.peak, mem.live)


def _check_meta_vs_cpu() -> None:
    """W = 1 peak of a reduced UNet3D forward on meta equals the one on real CPU tensors."""
    from test_parallel import randomize
    from vidcore.nn.attention import attention_backend
    from vidcore.models.unet3d import UNet3D, UNet3DConfig

    peaks = []
    for device in ("cpu", "meta"):
        torch.manual_seed(0)
        unet = randomize(UNet3D(UNet3DConfig(**REDUCED)), 0).to(device)
        inputs = (torch.randn(2, 4, 4, 8, 8).to(device), 500, torch.randn(2, 7, 64).to(device))
        with torch.no_grad(), attention_backend("math"), LiveBytes() as mem:
            unet(*inputs)
        peaks.append(mem.peak)
    assert peaks[0] == peaks[1], peaks
    print(f"self-checks passed: LiveBytes chain (3N), reduced UNet3D W = 1 peak on CPU = on meta "
          f"({peaks[0] / 2**20:.2f} MiB)")


@contextmanager
def fused_attention():
    """SDPA as a fused (memory-efficient / flash) GPU kernel allocates it: the output only, no score matrix
    (on meta, F.scaled_dot_product_attention decomposes into the math path, which materializes the scores)."""
    import torch.nn.functional as F

    saved = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, *a, **kw: \
        torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, False)[0]
    try:
        yield
    finally:
        F.scaled_dot_product_attention = saved


def count(model, make, frames: int, world: int):
    """FLOPs, bytes sent and peak activation bytes of rank 0 (the largest slice) for one forward."""
    from torch.utils.flop_counter import FlopCounterMode

    from vidcore.nn.attention import attention_backend
    from vidcore.parallel.comm import split_sizes

    inputs = make(split_sizes(frames, world)[0])
    with torch.no_grad(), attention_backend("math"), meta_rank(world, frames) as fake, \
            FlopCounterMode(display=False) as flops:
        model(*inputs)
    with torch.no_grad(), attention_backend("sdpa"), fused_attention(), meta_rank(world, frames), LiveBytes() as mem:
        model(*inputs)
    return flops.get_total_flops(), fake.sent, mem.peak


def part2(args) -> None:
    from vidcore.conversion.maps.original_svd import SVD_XT_UNET_CONFIG
    from vidcore.models.svd_unet import SVDUNet, SVDUNetConfig
    from vidcore.models.unet3d import UNet3D, UNet3DConfig
    from vidcore.parallel.comm import split_sizes

    _check_live_bytes()
    _check_meta_vs_cpu()
    modelscope = {"attention_head_dim": 64, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1024,
                  "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"], "layers_per_block": 2,
                  "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3}
    dt = torch.float16
    with torch.device("meta"):
        ms = UNet3D(UNet3DConfig.from_diffusers_config(modelscope)).to(dt)
        svd = SVDUNet(SVDUNetConfig.from_diffusers_config(SVD_XT_UNET_CONFIG)).to(dt)
    cases = [("Zeroscope 576x320", ms, 24, (1, 2, 4, 8),
              lambda f_l: (torch.empty(2, 4, f_l, 40, 72, device="meta", dtype=dt), 500,
                           torch.empty(2, 77, 1024, device="meta", dtype=dt))),
             ("SVD-XT 1024x576", svd, 25, (1, 2, 4, 5, 8),
              lambda f_l: (torch.empty(2, f_l, 8, 72, 128, device="meta", dtype=dt), 500,
                           torch.empty(2, 1, 1024, device="meta", dtype=dt),
                           torch.empty(2, 3, device="meta", dtype=dt)))]
    cases = [c for c in cases if not args.models or any(m.lower() in c[0].lower() for m in args.models)]
    print("\n## Part 2: per UNet forward on the CFG batch (b = 2), fp16, frames split over W ranks as "
          "torch.tensor_split (rank 0 holds the largest slice; its FLOPs, bytes sent and peak activations; halo "
          f"for a rank with two neighbours when W > 2; time at {args.tflops:g} TFLOP/s achieved and "
          f"{args.link_gbs:g} GB/s per link, no overlap)\n")
    rows = []
    for name, model, frames, worlds, make in cases:
        base_peak = None
        for w in worlds:
            t0 = time.perf_counter()
            flops, sent, peak = count(model, make, frames, w)
            if w > 2:
                sent["halo"] *= 2  # rank 0 has one neighbour; an interior rank sends the same to two
            base_peak = peak if w == 1 else base_peak
            total = sum(sent.values())
            t_compute, t_comm = flops / (args.tflops * 1e12), total / (args.link_gbs * 1e9)
            sizes = split_sizes(frames, w)
            rows.append((name, frames, w, "/".join(map(str, sorted(set(sizes), reverse=True))),
                         f"{flops / 1e12:.2f}", f"{sent['all-to-all'] / 2**20:.0f}", f"{sent['halo'] / 2**20:.0f}",
                         f"{sent['norm stats'] / 2**10:.0f} KiB", f"{flops / total:.0f}" if total else "-",
                         f"{1000 * t_compute:.0f}", f"{1000 * t_comm:.1f}", f"{peak / 2**30:.2f}",
                         f"{peak / base_peak:.3f}" if base_peak else "-"))
            print(f"  {name} W={w}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(table(rows, ("model", "frames", "W", "frames per rank", "TFLOP per rank", "all-to-all MiB", "halo MiB",
                       "norm stats", "FLOP per byte sent", "compute ms", "comm ms", "peak activations GiB per rank",
                       "vs W=1")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("1", "2", "both"), default="both")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=16, help="latent height and width")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--tflops", type=float, default=300.0, help="assumed achieved fp16 TFLOP/s per GPU (part 2)")
    p.add_argument("--link-gbs", type=float, default=150.0, help="assumed GB/s each rank can send (part 2)")
    p.add_argument("--models", nargs="*", help="part 2: only the rows whose model name contains one of these")
    args = p.parse_args()
    print_machine()
    if args.part in ("1", "both"):
        part1(args)
    if args.part in ("2", "both"):
        part2(args)


if __name__ == "__main__":
    main()
