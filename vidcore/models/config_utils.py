"""What the model configs share: diffusers ``config.json`` in and out, per-level options, block-type checks."""

from __future__ import annotations

from dataclasses import fields
from typing import ClassVar


class DiffusersConfig:
    """Base of the frozen config dataclasses: read and write diffusers config dicts, expand per-level options.

    A subclass sets ``diffusers_class`` (the ``_class_name`` it writes), ``label`` (how errors name it) and
    optionally ``fixed_options``: diffusers keys vidcore accepts with one value only, refused otherwise with
    ``fixed_reason``. Class attributes, not dataclass fields."""

    diffusers_class: ClassVar[str] = ""
    label: ClassVar[str] = "config"
    fixed_options: ClassVar[dict] = {}
    fixed_reason: ClassVar[str] = ""

    @classmethod
    def from_diffusers_config(cls, config: dict):
        cfg = cls(**cls.diffusers_values(config))
        cfg.validate()
        return cfg

    @classmethod
    def diffusers_values(cls, config: dict) -> dict:
        """The keys of ``config`` that are fields of ``cls``, JSON lists as tuples (the configs are frozen);
        other keys are diffusers options vidcore has no use for, unless ``fixed_options`` names them."""
        for key, allowed in cls.fixed_options.items():
            value = config.get(key, allowed)
            if value != allowed:
                raise ValueError(f"{cls.label}: {key}={value!r} is not supported ({cls.fixed_reason}; "
                                 f"expected {key}={allowed!r})")
        known = {f.name for f in fields(cls)}
        return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in known}

    def to_diffusers_config(self) -> dict:
        out = {f.name: (list(v) if isinstance(v, tuple) else v) for f in fields(self) for v in [getattr(self, f.name)]}
        return {"_class_name": self.diffusers_class, **out}

    def validate(self) -> None:
        pass

    def per_level(self, name: str, n: int | None = None, what: str = "levels", ints: bool = False) -> tuple:
        """Option ``name`` with one entry per level (``n``, default one per block width): diffusers writes a
        single int/bool for "the same at every level"."""
        value = getattr(self, name)
        n = len(self.block_out_channels) if n is None else n
        if isinstance(value, (tuple, list)):
            if len(value) != n:
                raise ValueError(f"{self.label}: {name} has {len(value)} entries for {n} {what}")
            value = tuple(value)
        else:
            value = (value,) * n
        if ints and not all(isinstance(v, int) for v in value):
            raise ValueError(f"{self.label}: {name} must be an int or one int per level, got {getattr(self, name)!r}")
        return value

    def check_blocks(self, down_types: tuple[str, ...], up_types: tuple[str, ...]) -> None:
        """One down and one up block per block width, each of a supported type; act_fn SiLU where configurable."""
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(f"{self.label}: {n} block_out_channels but {len(self.down_block_types)} down and "
                             f"{len(self.up_block_types)} up block types")
        for part, given, supported in (("down", self.down_block_types, down_types), ("up", self.up_block_types, up_types)):
            for t in given:
                if t not in supported:
                    raise ValueError(f"{self.label}: unknown {part} block type {t!r}; supported: {supported}")
        if getattr(self, "act_fn", "silu") != "silu":
            raise ValueError(f"{self.label}: act_fn {self.act_fn!r} is not supported (only 'silu')")
