"""Rules shared by several diffusers-layout maps."""

from ..engine import Rule


def attention_rules() -> list[Rule]:
    """diffusers wraps attention outputs and feed-forwards in Sequential/ModuleList containers."""
    return [
        Rule("{p}.to_out.0.{leaf}", "{p}.to_out.{leaf}"),
        Rule("{p}.net.0.proj.{leaf}", "{p}.proj_in.{leaf}", name="feed-forward in"),
        Rule("{p}.net.2.{leaf}", "{p}.proj_out.{leaf}", name="feed-forward out"),
    ]


def identity() -> Rule:
    """Everything else keeps its name (the native modules reuse diffusers' names where they are clear)."""
    return Rule("{key}", "{key}", name="same name")
