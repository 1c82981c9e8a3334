"""diffusers ``MotionAdapter`` <-> vidcore ``MotionAdapter`` (AnimateDiff motion modules).

diffusers wraps each level's motion modules in a ``MotionModules`` container
(``down_blocks.{i}.motion_modules.{j}``, ``mid_block.motion_modules.{j}``); vidcore keeps plain
nested lists (``down_blocks.{i}.{j}``, ``mid_block.{j}``). Inside a module the names are the
temporal transformer's (``norm``, ``proj_in``, ``transformer_blocks.{k}.{norm1, attn1, pos_embed.pe, ...}``).
"""

from ..engine import ChainedMap, KeyMap, Rule
from .common import attention_rules, identity

CONTAINER_RULES = [
    Rule(f"{part}.{{i:int}}.motion_modules.{{j:int}}.{{rest}}", f"{part}.{{i}}.{{j}}.{{rest}}",
         name=f"{part}.*.motion_modules")
    for part in ("down_blocks", "up_blocks")
] + [Rule("mid_block.motion_modules.{j:int}.{rest}", "mid_block.{j}.{rest}", name="mid_block.motion_modules")]

# Two passes: containers, then the attention/feed-forward containers inside each module.
# conv_in (PIA adapters) keeps its name.
MOTION_ADAPTER_MAP = ChainedMap([KeyMap([*CONTAINER_RULES, identity()], name="motion-modules"),
                                 KeyMap([*attention_rules(), identity()], name="attention")],
                                name="diffusers-motion-adapter")
