"""Rules shared by several diffusers-layout maps."""

from ..engine import Rule


def attention_rules() -> list[Rule]:
    """diffusers wraps attention outputs and feed-forwards in Sequential/ModuleList containers."""
    rules = [Rule("{p}.to_out.0.{leaf}", "{p}.to_out.{leaf}")]
    for ff in ("ff", "ff_in"):  # ff_in: SVD's temporal blocks
        rules += [
            Rule(f"{{p}}.{ff}.net.0.proj.{{leaf}}", f"{{p}}.{ff}.proj_in.{{leaf}}"),
            Rule(f"{{p}}.{ff}.net.2.{{leaf}}", f"{{p}}.{ff}.proj_out.{{leaf}}"),
        ]
    return rules


def identity() -> Rule:
    """Everything else keeps its name (the native modules reuse diffusers' names where they are clear)."""
    return Rule("{key}", "{key}", name="same name")
