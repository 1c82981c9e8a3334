"""diffusers ``SparseControlNetModel`` <-> vidcore ``SparseControlNet`` (AnimateDiff SparseCtrl).

The ControlNet part has :mod:`.diffusers_controlnet`'s names (the SD encoder half, ``controlnet_cond_embedding``
as a conv stack, or as one conv with ``.weight``/``.bias`` in the RGB variant, the zero convs). diffusers keeps
each level's motion modules inside its down block (``down_blocks.{i}.motion_modules.{j}``); vidcore keeps them
beside the blocks (``motion_modules.{i}.{j}``), with the motion adapter's inner names.
"""

from collections.abc import Mapping

from ..engine import ChainedMap, KeyMap, Rule
from .common import identity
from .diffusers_controlnet import controlnet_map

MOTION_RULE = Rule("down_blocks.{i:int}.motion_modules.{j:int}.{rest}", "motion_modules.{i}.{j}.{rest}",
                   name="down_blocks.*.motion_modules -> motion_modules")


def sparse_controlnet_map(config: Mapping | None) -> ChainedMap:
    """The map for a diffusers config dict (projections as in :func:`.diffusers_controlnet.controlnet_map`)."""
    return ChainedMap([KeyMap([MOTION_RULE, identity()], name="sparsectrl-motion-modules"), controlnet_map(config)],
                      name="diffusers-sparse-controlnet")


SPARSE_CONTROLNET_MAP = sparse_controlnet_map(None)
