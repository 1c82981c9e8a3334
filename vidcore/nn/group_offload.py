"""Group offload (diffusers' ``enable_group_offload``): a model's weights stay on an offload device (the CPU) and
each group of its modules is copied to the onload device (the GPU) just before the group runs and dropped right
after it, so only a few groups occupy the GPU at a time. It is all torch forward pre-hooks and forward hooks
(``forward`` is never replaced); :meth:`GroupOffload.remove` takes them off and leaves every tensor on the offload
device, the outputs unchanged.

The groups:

* ``block_level``: every ``ModuleList`` / ``Sequential`` is cut into groups of ``num_blocks_per_group``
  consecutive children (a list inside a list is cut in turn); a child that holds lists further down (a VAE's
  encoder, a mid block) is searched the same way; every other child with tensors (``conv_in``, the time
  embedding, norms, ``conv_out``) is a group of its own, and a searched module's own parameters and buffers are a
  group onloaded for its forward. Nothing stays behind on the offload device.
* ``leaf_level``: every module with parameters or buffers of its own is a group (sequential CPU offload).

Every module of a group is hooked, since models may call a block's layers without calling the block. A group is
onloaded when the first of them starts and offloaded when the one that returned last in its first use returns
again (a group of one called module: when it returns); until that first use is over (the forward of the module
it was found in returns), it is offloaded when another group is onloaded.

Onloading copies a tensor to the onload device and keeps the host tensor; offloading puts the host tensor back,
so nothing is copied back to the host (this is for inference: weights edited while onloaded are not kept). With
``use_stream`` (CUDA) the host tensors are pinned and a side stream copies the group that runs next (in the order
the model's first forward ran them; module order before that) while the current one computes.

Code that reads a module's weights without calling it (``F.conv2d(x, conv.weight)``) does so inside
:func:`onloaded`, which onloads that module's group for the read.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain

import torch
from torch import nn

from ..errors import UnsupportedFeatureError

OFFLOAD_TYPES = ("block_level", "leaf_level")

# module -> (a weak reference to its GroupOffload, its group's index), for onloaded(); weak so that a model dropped
# with offload on is freed
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class GroupOffloadConfig:
    """The settings of ``enable_group_offload`` (diffusers' names), checked when made so a bad one fails before
    any weight moves."""

    onload_device: torch.device | str
    offload_device: torch.device | str = "cpu"
    offload_type: str = "block_level"
    num_blocks_per_group: int = 1
    non_blocking: bool = False
    use_stream: bool = False

    def __post_init__(self):
        object.__setattr__(self, "onload_device", torch.device(self.onload_device))
        object.__setattr__(self, "offload_device", torch.device(self.offload_device))
        if self.offload_type not in OFFLOAD_TYPES:
            raise ValueError(f"offload_type must be one of {OFFLOAD_TYPES}, got {self.offload_type!r}")
        if not isinstance(self.num_blocks_per_group, int) or self.num_blocks_per_group < 1:
            raise ValueError(f"num_blocks_per_group must be a positive int, got {self.num_blocks_per_group!r}")
        cuda = torch.cuda.is_available()
        if self.use_stream and not cuda:
            raise UnsupportedFeatureError("use_stream=True needs CUDA (a side CUDA stream and pinned CPU memory), "
                                          "and torch.cuda.is_available() is False here; use use_stream=False")
        for name in ("onload_device", "offload_device"):
            device = getattr(self, name)
            if device.type == "cuda" and not cuda:
                raise UnsupportedFeatureError(f"{name}={str(device)!r} needs CUDA, and torch.cuda.is_available() "
                                              "is False here")
        if self.use_stream and (self.onload_device.type != "cuda" or self.offload_device.type != "cpu"):
            raise ValueError("use_stream=True copies from pinned CPU memory to a CUDA device: it needs "
                             f"offload_device='cpu' and a CUDA onload_device, got {self.offload_device} -> "
                             f"{self.onload_device}")


@dataclass(eq=False)
class OffloadGroup:
    """Modules whose tensors move together; ``own_only``: only the modules' own parameters and buffers (their
    children are other groups). ``onloads`` / ``offloads`` count the moves."""

    name: str
    modules: tuple[nn.Module, ...] = field(repr=False)
    own_only: bool = False
    onloads: int = 0
    offloads: int = 0
    host: dict = field(default_factory=dict, repr=False)  # id(tensor) -> its host tensor while onloaded
    active: int = field(default=0, repr=False)  # its modules running now (between their pre-hook and hook)
    last: int | None = field(default=None, repr=False)  # id of the module that returned last in its first use
    learned: bool = False  # ``last`` is final: the forward of the module the group was found in has returned

    def tensors(self) -> list[torch.Tensor]:
        found = {}
        for m in self.modules:
            for t in chain(m.parameters(recurse=not self.own_only), m.buffers(recurse=not self.own_only)):
                found[id(t)] = t
        return list(found.values())

    def covered(self) -> list[nn.Module]:
        """The modules whose tensors this group moves (each is hooked)."""
        return list(self.modules) if self.own_only else [m for top in self.modules for m in top.modules()]


def _is_list(module: nn.Module) -> bool:
    return isinstance(module, (nn.ModuleList, nn.Sequential))


def _has_tensors(module: nn.Module, recurse: bool = True) -> bool:
    return next(chain(module.parameters(recurse), module.buffers(recurse)), None) is not None


def _cut(lst: nn.Module, per_group: int, path: str, groups: list, seen: set) -> None:
    blocks = []
    for name, child in lst.named_children():
        if id(child) in seen:
            continue
        seen.add(id(child))
        if _is_list(child):
            _cut(child, per_group, f"{path}.{name}", groups, seen)
        elif _has_tensors(child):
            blocks.append((name, child))
    for i in range(0, len(blocks), per_group):
        part = blocks[i:i + per_group]
        span = part[0][0] if len(part) == 1 else f"{part[0][0]}-{part[-1][0]}"
        groups.append(OffloadGroup(f"{path}.{span}", tuple(m for _, m in part)))


def _search(module: nn.Module, per_group: int, path: str, groups: list, containers: list, seen: set) -> None:
    containers.append(module)
    if _has_tensors(module, recurse=False):
        groups.append(OffloadGroup(path or "(own)", (module,), own_only=True))
    for name, child in module.named_children():
        if id(child) in seen:
            continue
        seen.add(id(child))
        where = f"{path}.{name}" if path else name
        if _is_list(child):
            _cut(child, per_group, where, groups, seen)
        elif any(_is_list(m) for m in child.modules()):
            _search(child, per_group, where, groups, containers, seen)
        elif _has_tensors(child):
            groups.append(OffloadGroup(where, (child,)))


def block_groups(model: nn.Module, per_group: int) -> tuple[list[OffloadGroup], list[nn.Module]]:
    """``block_level`` groups (module docstring) and the modules searched for them (after each one's forward,
    nothing of it stays onloaded)."""
    groups, containers = [], []
    _search(model, per_group, "", groups, containers, {id(model)})
    return groups, containers


def leaf_groups(model: nn.Module) -> tuple[list[OffloadGroup], list[nn.Module]]:
    """``leaf_level`` groups: one per module with tensors of its own."""
    groups = [OffloadGroup(name or "(own)", (m,), own_only=True) for name, m in model.named_modules()
              if _has_tensors(m, recurse=False)]
    return groups, [model]


class GroupOffload:
    """The hooks of one model: its ``groups``, which are ``onloaded`` now (and, with streams, ``prefetched``),
    and the ``order`` they run in. Made by :func:`enable_group_offload`."""

    def __init__(self, model: nn.Module, config: GroupOffloadConfig):
        self.config = config
        planned = (leaf_groups(model) if config.offload_type == "leaf_level"
                   else block_groups(model, config.num_blocks_per_group))
        self.groups, containers = planned
        self.onloaded: list[OffloadGroup] = []
        self.prefetched: dict[OffloadGroup, torch.cuda.Event] = {}
        self._follow(list(self.groups))
        self._seen: dict[OffloadGroup, None] | None = {}  # first onloads until the model's first forward ends
        self._stream = torch.cuda.Stream(config.onload_device) if config.use_stream else None
        for group in self.groups:
            for t in group.tensors():
                host = t.data.to(config.offload_device)
                t.data = host.pin_memory() if config.use_stream else host
        self._handles = []
        # every module of a group is hooked (models may call a block's layers directly). The hooks wrap any others
        # (pre-hook first, post-hook appended last), so a layer's own hooks, such as layerwise casting's upcast and
        # restore, nest inside the onload and the offload in whichever order the two were enabled
        for group in self.groups:
            for m in group.covered():
                self._handles.append(m.register_forward_pre_hook(lambda m, args, g=group: self._enter(g),
                                                                 prepend=True))
                self._handles.append(m.register_forward_hook(lambda m, args, out, g=group: self._exit(g, m),
                                                             always_call=True))
        for i, group in enumerate(self.groups):
            for m in group.covered():
                _OWNERS[m] = (weakref.ref(self), i)
        self._calls: list[dict] = []  # the groups of each searched module whose forward is running, outermost first
        for container in containers:
            inside = {id(m) for m in container.modules()}
            mine = {g: None for g in self.groups if id(g.modules[0]) in inside}
            self._handles.append(container.register_forward_pre_hook(
                lambda m, args, mine=mine: self._calls.append(mine)))
            self._handles.append(container.register_forward_hook(
                lambda m, args, out, mine=mine: self._sweep(mine, m is model), always_call=True))

    # -- moves ----------------------------------------------------------------------------------
    def _copy_in(self, group: OffloadGroup) -> None:
        """Onload every tensor of ``group``, or none: a copy that fails (out of memory on a small GPU) puts the
        tensors already moved back on the host before the error goes on."""
        non_blocking = self.config.non_blocking or self._stream is not None
        moved = []
        try:
            for t in group.tensors():
                host = t.data
                t.data = host.to(self.config.onload_device, non_blocking=non_blocking)
                moved.append((t, host))
        except BaseException:
            for t, host in moved:
                t.data = host
            raise
        for t, host in moved:
            group.host[id(t)] = host

    def _copy_out(self, group: OffloadGroup) -> None:
        for t in group.tensors():
            host = group.host.pop(id(t), None)
            t.data = host if host is not None else t.data.to(self.config.offload_device)
        group.host.clear()

    def onload(self, group: OffloadGroup) -> None:
        """Make ``group`` usable on the onload device (no-op when it is); with streams, start copying the next."""
        if group in self.onloaded:
            return
        for other in list(self.onloaded):  # before its offload point is known, a group waits for the next one
            if not other.learned and not other.active:
                self.offload(other)
        event = self.prefetched.pop(group, None)
        if event is None:
            self._copy_in(group)
        else:  # copied on the side stream: wait for it, and keep its memory until this stream is done with it
            current = torch.cuda.current_stream(self.config.onload_device)
            current.wait_event(event)
            for t in group.tensors():
                t.data.record_stream(current)
        self.onloaded.append(group)
        group.onloads += 1
        if self._seen is not None:
            self._seen[group] = None
        if self._stream is not None:
            self._prefetch_after(group)

    def offload(self, group: OffloadGroup) -> None:
        """Put ``group``'s host tensors back (no-op when it is not onloaded)."""
        if group in self.onloaded:
            self.onloaded.remove(group)
            self._copy_out(group)
            group.offloads += 1

    def _follow(self, order: list[OffloadGroup]) -> None:
        self.order = order
        self._next = dict(zip(order, order[1:]))

    def _prefetch_after(self, group: OffloadGroup) -> None:
        """One group at a time, and only one of the outermost module running now (a prefetch never outlives the
        call)."""
        following = self._next.get(group)
        if following is None or self.prefetched or following in self.onloaded:
            return
        if not self._calls or following not in self._calls[0]:
            return
        with torch.cuda.stream(self._stream):
            self._copy_in(following)
        self.prefetched[following] = self._stream.record_event()

    # -- hooks ----------------------------------------------------------------------------------
    def _enter(self, group: OffloadGroup) -> None:
        group.active += 1
        self.onload(group)

    def _exit(self, group: OffloadGroup, module: nn.Module) -> None:
        group.active -= 1
        if group.modules == (module,):  # the group's one top module returned: the group is done
            group.last, group.learned = id(module), True
        if not group.learned:
            group.last = id(module)
        elif group.last == id(module) and not group.active:
            self.offload(group)

    def _sweep(self, groups, model_done: bool) -> None:
        """After a searched module's forward nothing of it stays on the onload device (members that did not run,
        a prefetch that will not be used); after the model's first forward the run order is known."""
        if self._calls and self._calls[-1] is groups:
            self._calls.pop()
        for group in groups:
            self.offload(group)
            if self.prefetched.pop(group, None) is not None:
                self._copy_out(group)
            group.learned = group.learned or group.last is not None
        if model_done and self._seen is not None:
            self._follow([*self._seen, *(g for g in self.groups if g not in self._seen)])
            self._seen = None

    def remove(self) -> None:
        """Every hook off, every tensor on the offload device."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._calls = []
        self._sweep(self.groups, False)
        for group in self.groups:
            for m in group.covered():
                _OWNERS.pop(m, None)


@contextmanager
def onloaded(module: nn.Module):
    """``module``'s weights on the onload device inside the block, for code that reads them without calling the
    module; a no-op without group offload or while its group is onloaded anyway."""
    owner = _OWNERS.get(module)
    offload = None if owner is None else owner[0]()
    group = None if offload is None else offload.groups[owner[1]]
    if group is None or group in offload.onloaded:
        yield
        return
    offload.onload(group)
    try:
        yield
    finally:
        offload.offload(group)


def enable_group_offload(model: nn.Module, config: GroupOffloadConfig) -> GroupOffload:
    """Group offload on ``model`` (replacing any it had); ``model.group_offload`` holds the hooks."""
    disable_group_offload(model)
    model.group_offload = GroupOffload(model, config)
    return model.group_offload


def disable_group_offload(model: nn.Module) -> None:
    """Hooks off, weights left on the offload device; nothing happens without group offload on."""
    hooks = vars(model).pop("group_offload", None)
    if hooks is not None:
        hooks.remove()


__all__ = ["GroupOffload", "GroupOffloadConfig", "OFFLOAD_TYPES", "OffloadGroup", "block_groups",
           "disable_group_offload", "enable_group_offload", "leaf_groups", "onloaded"]
