"""The pipeline side of the step caches: ``enable_deep_cache`` / ``enable_block_cache`` on every pipeline.

The cache is a setting of the pipeline. Its UNet sees it only while a sampling run is under way
(:meth:`StepCacheMixin.step_cache_scope`, entered by the run's :class:`~vidcore.sampling.loop.Progress`), so a
UNet shared with another pipeline or called directly runs uncached, and no cached tensor outlives the run."""

from __future__ import annotations

from contextlib import contextmanager

from .combinations import check_combination
from .step_cache import StepCache


def _backbone(unet):
    """The module whose forward walks the UNet levels (AnimateDiff's UNetMotion runs its UNet2D's)."""
    return getattr(unet, "unet", unet)


class StepCacheMixin:
    """``pipe.enable_deep_cache(cache_interval=3, cache_branch_id=0)``, ``pipe.enable_block_cache(threshold=0.05)``
    and their ``disable_*``; the counts of the last call are ``pipe.cache_stats()`` (also on the output)."""

    _cache: StepCache | None = None

    def _step_cache(self) -> StepCache | None:
        return self._cache

    def _set_step_cache(self, cache: StepCache | None) -> None:
        self._cache = cache

    @contextmanager
    def sampling_scope(self):
        """What the pipeline's settings put on its models for one sampling run (entered by the run's
        :class:`~vidcore.sampling.loop.Progress`), restored after: here the step cache; feature mixins that
        reach the models add theirs and chain to this one (:meth:`FreeNoiseMixin.sampling_scope`)."""
        with self.step_cache_scope():
            yield

    @contextmanager
    def step_cache_scope(self):
        """The pipeline's step cache on its UNet for the ``with`` block (a sampling run); restored after."""
        backbone = _backbone(self.unet)
        had, previous = "step_cache" in vars(backbone), getattr(backbone, "step_cache", None)
        backbone.step_cache = self._cache
        try:
            yield
        finally:
            if had:
                backbone.step_cache = previous
            else:
                del backbone.step_cache

    def enable_deep_cache(self, cache_interval: int = 3, cache_branch_id: int = 0, uniform: bool = True) -> None:
        """DeepCache (see :mod:`vidcore.sampling.step_cache`): every ``cache_interval``-th step runs the whole
        UNet, the others only its levels ``0..cache_branch_id``; ``uniform=False`` puts more full steps early.
        ``cache_interval=1`` is the uncached run, bit for bit."""
        levels = len(_backbone(self.unet).down_blocks)
        if not isinstance(cache_branch_id, int) or not 0 <= cache_branch_id < levels:
            raise ValueError(f"cache_branch_id must be an integer in 0..{levels - 1} (this UNet has {levels} "
                             f"levels), got {cache_branch_id!r}")
        if not isinstance(cache_interval, int) or cache_interval < 1:
            raise ValueError(f"cache_interval must be an integer >= 1, got {cache_interval!r}")
        self._set_step_cache(StepCache("deep", cache_interval=cache_interval, cache_branch_id=cache_branch_id,
                                       uniform=uniform))

    def disable_deep_cache(self) -> None:
        if (cache := self._step_cache()) is not None and cache.method == "deep":
            self._set_step_cache(None)

    def enable_block_cache(self, threshold: float = 0.05) -> None:
        """First-block cache: a step whose first-level feature moved less than ``threshold`` (relative mean
        absolute change since the last full step) reuses that step's residual. ``threshold=0`` never reuses."""
        self._set_step_cache(StepCache("block", threshold=float(threshold)))
        self.check_step_cache_parallel()

    def disable_block_cache(self) -> None:
        if (cache := self._step_cache()) is not None and cache.method == "block":
            self._set_step_cache(None)

    def check_step_cache_parallel(self) -> None:
        """The block cache decides per rank from its own data: frame-parallel ranks could disagree and stall in
        the temporal layers' exchanges, so the two exclude each other (DeepCache's schedule is the same on
        every rank, and CFG-parallel ranks exchange nothing inside the UNet)."""
        runner = getattr(self, "parallel", None)
        cache = self._step_cache()
        if runner is not None and runner.config.frame_size > 1 and cache is not None and cache.method == "block":
            self._set_step_cache(None)
            check_combination(self, block_cache=True, frame_parallel=True)

    def cache_stats(self) -> dict | None:
        """UNet calls of the last sampling loop run in full / from the cache, with the settings; None if off."""
        cache = self._step_cache()
        return None if cache is None else cache.summary()
