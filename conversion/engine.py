"""Conversion is data: a key map is a list of rules, and the same map runs both ways.

A `Rule` pairs a source key pattern with a target key pattern, plus an optional tensor transform
for each direction. Patterns are literal text with placeholders:

    {name}       one or more characters, dots included (non-greedy; the whole key must match)
    {name:int}   one or more digits

    Rule("{p}.to_out.0.{leaf}", "{p}.to_out.{leaf}")
    Rule("{p}.proj_in.{leaf}", "{p}.proj_in.{leaf}", forward=conv1x1_to_linear, reverse=linear_to_conv1x1)
    Rule("{key}", "{key}")            # explicit identity fallback, put it last

`KeyMap.convert` assigns every source key to the first rule that matches it (in "reverse" the
target patterns are matched and source keys produced), applies the transforms, and checks the
whole result — consumed keys, produced keys, shapes — before returning anything, so a bad
checkpoint fails with one message naming every problem instead of a half-loaded model.

Maps with index arithmetic (LDM `input_blocks.{3*i+j+1}`) are written as generated rule lists:
a map is plain Python data. The planning step works on groups of keys (`_Step`): `SplitRule` cuts
one fused tensor into several (qkv) and fuses them back in reverse, under the same checks.
`TiedRule` keeps one of several stored copies of a tensor (and writes the copies back in reverse).
`ChainedMap` runs maps in turn (original -> diffusers -> vidcore) and checks every stage.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Mapping

import torch
from torch import nn

from vidcore.errors import ConversionError

Transform = Callable[[torch.Tensor], torch.Tensor]
Direction = Literal["forward", "reverse"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)(?::(int))?\}")
_MAX_LISTED = 10


# --------------------------------------------------------------------------- transforms


def conv1x1_to_linear(t: torch.Tensor) -> torch.Tensor:
    """(o, i, 1, 1) conv weight -> (o, i) linear weight; other tensors (biases) pass through."""
    if t.ndim == 4 and t.shape[2:] == (1, 1):
        return t[:, :, 0, 0]
    return t


def linear_to_conv1x1(t: torch.Tensor) -> torch.Tensor:
    """(o, i) linear weight -> (o, i, 1, 1) conv weight; other tensors (biases) pass through."""
    if t.ndim == 2:
        return t[:, :, None, None]
    return t


# --------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class _Pattern:
    """A compiled key pattern: a regex to match keys and a token list to render them."""

    text: str
    regex: re.Pattern
    tokens: tuple  # str literals and ("name",) placeholders, in order
    names: frozenset

    @staticmethod
    def compile(text: str, int_names: frozenset) -> "_Pattern":
        parts, tokens, seen, pos = [], [], set(), 0
        for m in _PLACEHOLDER.finditer(text):
            literal = text[pos : m.start()]
            parts.append(re.escape(literal))
            tokens.append(literal)
            name = m.group(1)
            if name in seen:  # repeated placeholder must repeat the same text
                parts.append(f"(?P={name})")
            else:
                seen.add(name)
                body = r"\d+" if name in int_names else r".+?"
                parts.append(f"(?P<{name}>{body})")
            tokens.append((name,))
            pos = m.end()
        parts.append(re.escape(text[pos:]))
        tokens.append(text[pos:])
        rest = _PLACEHOLDER.sub("", text)
        if "{" in rest or "}" in rest:
            raise ValueError(f"bad placeholder in key pattern {text!r}: use {{name}} or {{name:int}}")
        return _Pattern(text, re.compile("".join(parts)), tuple(t for t in tokens if t != ""), frozenset(seen))

    def match(self, key: str) -> dict[str, str] | None:
        m = self.regex.fullmatch(key)
        return m.groupdict() if m else None

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(values[t[0]] if isinstance(t, tuple) else t for t in self.tokens)


def _int_names(*texts: str) -> frozenset:
    return frozenset(m.group(1) for t in texts for m in _PLACEHOLDER.finditer(t) if m.group(2) == "int")


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class _Step:
    """One unit of planned work: source keys -> target keys through one rule."""

    rule: "Rule"
    src_keys: tuple[str, ...]
    dst_keys: tuple[str, ...]

    def run(self, tensors: Mapping[str, torch.Tensor], direction: Direction) -> dict[str, torch.Tensor]:
        custom = getattr(self.rule, "run_step", None)  # multi-key rules (SplitRule) run their own steps
        if custom is not None:
            return custom(self, tensors, direction)
        fn = self.rule.forward if direction == "forward" else self.rule.reverse
        (src,), (dst,) = self.src_keys, self.dst_keys
        t = tensors[src]
        return {dst: fn(t) if fn is not None else t}


@dataclass(frozen=True)
class Rule:
    """Rename keys matching `src` to `dst` (and back), optionally transforming the tensor.

    `forward` and `reverse` must be given together so the map stays invertible. A placeholder
    typed `:int` on either side is digits-only on both sides.
    """

    src: str
    dst: str
    forward: Transform | None = None
    reverse: Transform | None = None
    name: str | None = None
    _src: _Pattern = field(init=False, repr=False, compare=False)
    _dst: _Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        ints = _int_names(self.src, self.dst)
        src, dst = _Pattern.compile(self.src, ints), _Pattern.compile(self.dst, ints)
        if src.names != dst.names:
            raise ValueError(
                f"rule {self.label}: both sides must use the same placeholders "
                f"(src has {sorted(src.names)}, dst has {sorted(dst.names)})"
            )
        if (self.forward is None) != (self.reverse is None):
            raise ValueError(f"rule {self.label}: give both forward and reverse transforms, or neither")
        object.__setattr__(self, "_src", src)
        object.__setattr__(self, "_dst", dst)

    @property
    def label(self) -> str:
        return self.name or f"{self.src} -> {self.dst}"

    def plan(self, key: str, direction: Direction) -> _Step | None:
        """The step converting `key`, or None when this rule does not match it."""
        frm, to = (self._src, self._dst) if direction == "forward" else (self._dst, self._src)
        values = frm.match(key)
        if values is None:
            return None
        return _Step(self, (key,), (to.render(values),))


@dataclass(frozen=True)
class SplitRule:
    """One fused source tensor <-> several target tensors cut into equal parts along `dim`.

    SplitRule("{p}.to_qkv.{leaf}", ("{p}.to_q.{leaf}", "{p}.to_k.{leaf}", "{p}.to_v.{leaf}"))

    Forward cuts the source into len(dst) parts (as torch.chunk); reverse concatenates the parts in
    the order given. In reverse, any one part key plans the whole group; a group with a part
    missing is reported (and not converted) instead of failing half-way.
    """

    src: str
    dst: tuple[str, ...]
    dim: int = 0
    name: str | None = None
    _src: _Pattern = field(init=False, repr=False, compare=False)
    _dst: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if isinstance(self.dst, str) or len(self.dst) < 2:
            raise ValueError(f"split rule {self.label}: give two or more target patterns")
        ints = _int_names(self.src, *self.dst)
        src = _Pattern.compile(self.src, ints)
        dst = tuple(_Pattern.compile(d, ints) for d in self.dst)
        for d in dst:
            if d.names != src.names:
                raise ValueError(
                    f"split rule {self.label}: all patterns must use the same placeholders "
                    f"({d.text!r} has {sorted(d.names)}, {src.text!r} has {sorted(src.names)})"
                )
        object.__setattr__(self, "dst", tuple(self.dst))
        object.__setattr__(self, "_src", src)
        object.__setattr__(self, "_dst", dst)

    @property
    def label(self) -> str:
        return self.name or f"{self.src} -> split({', '.join(self.dst)})"

    def plan(self, key: str, direction: Direction) -> _Step | None:
        return _plan_fan(self, self._src, self._dst, key, from_one=direction == "forward")

    def run_step(
        self, step: _Step, tensors: Mapping[str, torch.Tensor], direction: Direction
    ) -> dict[str, torch.Tensor]:
        if direction == "forward":
            # tensor_split always gives len(dst) parts (equal when the size divides, as torch.chunk);
            # a size that does not divide shows up as a shape mismatch in KeyMap.convert's checks.
            # Parts are cloned so they do not share storage (safetensors refuses shared tensors).
            parts = torch.tensor_split(tensors[step.src_keys[0]], len(self.dst), dim=self.dim)
            return {k: p.clone() for k, p in zip(step.dst_keys, parts)}
        return {step.dst_keys[0]: torch.cat([tensors[k] for k in step.src_keys], dim=self.dim)}


def _plan_fan(rule, one: _Pattern, many: tuple[_Pattern, ...], key: str, from_one: bool) -> _Step | None:
    """Plan a one-key <-> several-keys rule (SplitRule, TiedRule). From the single key, it names all
    the others; from any one of the several keys, the step takes the whole group (all rendered from
    the matched placeholders) to the single key."""
    if from_one:
        values = one.match(key)
        return None if values is None else _Step(rule, (key,), tuple(p.render(values) for p in many))
    for pattern in many:
        values = pattern.match(key)
        if values is not None:
            return _Step(rule, tuple(p.render(values) for p in many), (one.render(values),))
    return None


@dataclass(frozen=True)
class TiedRule:
    """Several source keys holding the same tensor <-> one target key.

    TiedRule(("{p}.attention_blocks.0.pos_encoder.pe", "{p}.attention_blocks.1.pos_encoder.pe"), "{p}.pos_embed.pe")

    Forward requires every copy to be present and equal (bit for bit) and keeps one; reverse writes
    one copy per source pattern. Any one source key plans the whole group; a group with a copy missing
    is reported like an incomplete split.
    """

    src: tuple[str, ...]
    dst: str
    name: str | None = None
    _src: tuple = field(init=False, repr=False, compare=False)
    _dst: _Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if isinstance(self.src, str) or len(self.src) < 2:
            raise ValueError(f"tied rule {self.label}: give two or more source patterns")
        ints = _int_names(self.dst, *self.src)
        dst = _Pattern.compile(self.dst, ints)
        src = tuple(_Pattern.compile(s, ints) for s in self.src)
        for s in src:
            if s.names != dst.names:
                raise ValueError(f"tied rule {self.label}: all patterns must use the same placeholders "
                                 f"({s.text!r} has {sorted(s.names)}, {dst.text!r} has {sorted(dst.names)})")
        object.__setattr__(self, "src", tuple(self.src))
        object.__setattr__(self, "_src", src)
        object.__setattr__(self, "_dst", dst)

    @property
    def label(self) -> str:
        return self.name or f"tie({', '.join(self.src)}) -> {self.dst}"

    def plan(self, key: str, direction: Direction) -> _Step | None:
        return _plan_fan(self, self._dst, self._src, key, from_one=direction == "reverse")

    def run_step(
        self, step: _Step, tensors: Mapping[str, torch.Tensor], direction: Direction
    ) -> dict[str, torch.Tensor]:
        if direction == "reverse":
            t = tensors[step.src_keys[0]]
            return {k: t.clone() for k in step.dst_keys}
        first, *rest = (tensors[k] for k in step.src_keys)
        for key, t in zip(step.src_keys[1:], rest):
            if first.is_meta or t.is_meta:
                continue
            if t.shape != first.shape or not torch.equal(t, first):
                raise ConversionError(f"rule {self.label!r}: {key} should hold the same tensor as "
                                      f"{step.src_keys[0]} but differs")
        return {step.dst_keys[0]: first}


# --------------------------------------------------------------------------- report


@dataclass
class ConversionReport:
    """What a conversion did (and, on failure, what went wrong), for errors and `vidcore inspect`."""

    map_name: str
    direction: Direction
    consumed: dict[str, list[str]] = field(default_factory=dict)  # rule label -> source keys
    mapping: dict[str, str] = field(default_factory=dict)  # source key -> target key
    unused_rules: list[str] = field(default_factory=list)
    unconsumed: list[str] = field(default_factory=list)  # source keys no rule matched
    unexpected: list[tuple[str, str]] = field(default_factory=list)  # (target key, rule label)
    missing: list[str] = field(default_factory=list)  # target keys nothing produced
    mismatched: list[tuple[str, str, str, tuple, tuple]] = field(default_factory=list)  # src, dst, rule, got, expected
    duplicates: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)  # dst, [(src, rule)]
    incomplete: list[tuple[list[str], str]] = field(default_factory=list)  # (absent keys of a group, rule label)
    expected_sources: dict[str, list[str]] = field(default_factory=dict)  # missing target -> source keys it needs

    @property
    def counts(self) -> dict[str, int]:
        return {label: len(keys) for label, keys in self.consumed.items()}

    def problems(self, strict: bool = True) -> list[str]:
        """Message lines, one section per kind of problem (key-set problems only when strict)."""
        lines: list[str] = []

        def section(title: str, items: list[str]):
            if not items:
                return
            lines.append(f"{title} ({len(items)}):")
            lines.extend(f"  {it}" for it in items[:_MAX_LISTED])
            if len(items) > _MAX_LISTED:
                lines.append(f"  ... and {len(items) - _MAX_LISTED} more")

        if strict:
            section("source keys no rule consumed", self.unconsumed)
            section("produced keys the target does not have", [f"{k} (rule {r!r})" for k, r in self.unexpected])
            section(
                "target keys nothing produced",
                [f"{k} (needs source key {', '.join(self.expected_sources[k])})" if self.expected_sources.get(k)
                 and self.expected_sources[k] != [k] else k for k in self.missing],
            )
            section(
                "keys a multi-key rule needs that the source lacks",
                [f"{', '.join(keys)} (rule {r!r})" for keys, r in self.incomplete],
            )
        section(
            "shape mismatches",
            [f"{s} -> {d} (rule {r!r}): got {tuple(g)}, expected {tuple(e)}" for s, d, r, g, e in self.mismatched],
        )
        section(
            "target keys produced more than once",
            [f"{d} <- " + ", ".join(f"{s} (rule {r!r})" for s, r in srcs) for d, srcs in self.duplicates],
        )
        return lines

    def summary(self) -> str:
        lines = [f"{self.map_name} ({self.direction}): {len(self.mapping)} keys"]
        lines += [f"  {n:6d}  {label}" for label, n in self.counts.items()]
        lines += [f"  {0:6d}  {label}  (unused)" for label in self.unused_rules]
        return "\n".join(lines)


# --------------------------------------------------------------------------- key map


@dataclass
class KeyMap:
    """An ordered list of rules; the first rule that matches a key converts it."""

    rules: list[Rule | SplitRule | TiedRule]
    name: str = "keymap"

    def plan(self, keys: Iterable[str], direction: Direction = "forward") -> tuple[list[_Step], list[str]]:
        """Assign keys to rules without touching tensors: (steps, unconsumed keys)."""
        if direction not in ("forward", "reverse"):
            raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
        steps, unconsumed, seen = [], [], set()
        for key in keys:
            step = next((s for r in self.rules if (s := r.plan(key, direction)) is not None), None)
            if step is None:
                unconsumed.append(key)
            elif step not in seen:  # the parts of a fused group all plan the same step
                seen.add(step)
                steps.append(step)
        return steps, unconsumed

    def convert(
        self,
        state_dict: Mapping[str, torch.Tensor],
        target_shapes: Mapping[str, torch.Size] | None = None,
        direction: Direction = "forward",
        strict: bool = True,
    ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
        """Convert `state_dict`; check it against `target_shapes` (if given) before returning.

        strict=False tolerates key-set differences (unconsumed source keys are dropped, produced
        keys absent from `target_shapes` are dropped, missing target keys are only reported);
        shape mismatches and two sources producing one target always raise.
        """
        report = ConversionReport(self.name, direction)
        steps, report.unconsumed = self.plan(state_dict.keys(), direction)
        complete = []
        for step in steps:
            absent = [k for k in step.src_keys if k not in state_dict]
            (report.incomplete.append((absent, step.rule.label)) if absent else complete.append(step))
        steps = complete

        produced: dict[str, list[_Step]] = defaultdict(list)
        for step in steps:
            report.consumed.setdefault(step.rule.label, []).extend(step.src_keys)
            for dst in step.dst_keys:
                produced[dst].append(step)
            if len(step.src_keys) == len(step.dst_keys):
                for src, dst in zip(step.src_keys, step.dst_keys):
                    report.mapping[src] = dst
            else:  # split (one source, several targets) or fuse (several sources, one target)
                for src in step.src_keys:
                    report.mapping[src] = " + ".join(step.dst_keys)
        used = set(report.consumed)
        report.unused_rules = [r.label for r in self.rules if r.label not in used]

        for dst, by in produced.items():
            if len(by) > 1:
                report.duplicates.append((dst, [(s, st.rule.label) for st in by for s in st.src_keys]))

        out: dict[str, torch.Tensor] = {}
        for step in steps:
            for dst, t in step.run(state_dict, direction).items():
                if target_shapes is not None and dst not in target_shapes:
                    report.unexpected.append((dst, step.rule.label))
                    continue
                if target_shapes is not None and tuple(t.shape) != tuple(target_shapes[dst]):
                    src = step.src_keys[0] if len(step.src_keys) == 1 else "+".join(step.src_keys)
                    report.mismatched.append((src, dst, step.rule.label, tuple(t.shape), tuple(target_shapes[dst])))
                out[dst] = t
        if target_shapes is not None:
            report.missing = [k for k in target_shapes if k not in produced]
            opposite: Direction = "reverse" if direction == "forward" else "forward"
            for k in report.missing[:_MAX_LISTED]:  # name the source key each listed target would come from
                step = next((st for r in self.rules if (st := r.plan(k, opposite)) is not None), None)
                if step is not None:
                    report.expected_sources[k] = list(step.dst_keys)

        problems = report.problems(strict)
        if problems:
            raise ConversionError(
                f"cannot convert checkpoint with map '{self.name}' ({direction}):\n" + "\n".join(problems), report
            )
        return out, report


@dataclass
class ChainedMap:
    """Key maps applied in turn (e.g. original -> diffusers -> vidcore); converts like one `KeyMap`.

    Forward runs the maps in order, reverse in the opposite order. With `target_shapes`, every stage
    is checked against its own layout: the final shapes are carried back through the later maps
    (on meta tensors, no memory), so a bad checkpoint fails at the first stage, in its own key names.
    The report is the first stage's, with `mapping` followed through to the final keys.
    """

    maps: list[KeyMap]
    name: str = ""

    def __post_init__(self):
        if not self.name:
            self.name = " + ".join(m.name for m in self.maps)

    def convert(
        self,
        state_dict: Mapping[str, torch.Tensor],
        target_shapes: Mapping[str, torch.Size] | None = None,
        direction: Direction = "forward",
        strict: bool = True,
    ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
        if direction not in ("forward", "reverse"):
            raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
        maps = list(self.maps) if direction == "forward" else list(reversed(self.maps))
        back: Direction = "reverse" if direction == "forward" else "forward"
        stage_shapes: list[Mapping[str, torch.Size] | None] = [None] * len(maps)
        if target_shapes is not None:
            stage_shapes[-1] = target_shapes
            meta = {k: torch.empty(tuple(s), device="meta") for k, s in target_shapes.items()}
            for i in range(len(maps) - 1, 0, -1):
                meta, _ = maps[i].convert(meta, None, direction=back)
                stage_shapes[i - 1] = {k: t.shape for k, t in meta.items()}
        out, reports = state_dict, []
        for keymap, shapes in zip(maps, stage_shapes):
            out, rep = keymap.convert(out, shapes, direction=direction, strict=strict)
            reports.append(rep)
        first = reports[0]
        report = ConversionReport(self.name, direction, consumed=first.consumed, unused_rules=first.unused_rules)
        for src, mid in first.mapping.items():
            keys = mid.split(" + ")
            for rep in reports[1:]:
                keys = [k for key in keys for k in rep.mapping.get(key, key).split(" + ")]
            report.mapping[src] = " + ".join(dict.fromkeys(keys))
        return out, report


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    keymap: KeyMap | ChainedMap,
    direction: Direction = "forward",
    strict: bool = True,
    assign: bool | None = None,
) -> ConversionReport:
    """Convert `state_dict` against `module`'s own keys and shapes, then load it in one go.

    Everything is converted and checked before the module is touched, so on error the module is
    unchanged. `assign=None` assigns the tensors (instead of copying) when the module has meta
    parameters, since those have no storage to copy into. dtype conversion is the caller's job.
    """
    own = module.state_dict()
    target_shapes = {k: v.shape for k, v in own.items()}
    converted, report = keymap.convert(state_dict, target_shapes, direction=direction, strict=strict)
    if assign is None:
        assign = any(t.is_meta for t in own.values())
    module.load_state_dict(converted, strict=strict, assign=assign)
    return report
