"""The pipeline x feature table (vidcore.pipelines.features) checked cell by cell against what the pipelines do.

Every "yes" cell runs its feature on a tiny random model of that pipeline (2 steps, latents out): the result is
finite, has the plain run's shape, and differs from the plain run (or equals it at a setting where the feature is
defined to change nothing). Every "no" cell is refused the way the module promises: a switch raises
UnsupportedFeatureError (a ValueError, a NotImplementedError and an AttributeError, so ``hasattr`` is False), an
argument is absent from ``__call__``'s signature. The table is read off the code (no ``*_support`` or
``capabilities`` class attributes), and the exclusions of vidcore.sampling.combinations name real features."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import save_file

import tiny
import tiny_animatediff as ta
import tiny_controlnet as tc
import tiny_sdxl
import tiny_zero
import vidcore
from tiny_ip_adapter import write_ip_adapter_repo
from vidcore.errors import UnsupportedFeatureError
from vidcore.pipelines.features import FEATURES, PIPELINES, SWITCHES, capability_table, pipeline_class
from vidcore.sampling.combinations import EXCLUSIONS, check_combination

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).resolve().parent
PIPELINES_DIR = Path(vidcore.__file__).resolve().parent / "pipelines"

TABLE = capability_table()
YES = [(p, f) for p, row in TABLE.items() for f, has in row.items() if has]
NO = [(p, f) for p, row in TABLE.items() for f, has in row.items() if not has]
# the __call__ argument each argument feature adds (FEATURES' "how" column says the same in words)
ARGUMENTS = {"context_windows": "context_length", "motion_scale": "motion_scale", "keyframes": "last_image"}
SWITCHES_OF = {feature: [s for s, f in SWITCHES.items() if f == feature] for feature in FEATURES}

STEPS = 2
FRAMES = 4
# pipeline -> the Models key of the LoRA it loads, for the UNets no AnimateDiff motion LoRA fits
TRAINED_LORAS = {"TextToVideoPipeline": "lora_t2v", "VideoToVideoPipeline": "lora_t2v",
                 "I2VGenXLPipeline": "lora_i2vgen", "StableVideoDiffusionPipeline": "lora_svd"}


def _image(seed=0, size=(40, 52)):
    return PIL.Image.fromarray(np.random.RandomState(seed).randint(0, 256, (*size, 3), dtype=np.uint8))


def _video(frames=FRAMES, seed=1):
    rng = np.random.RandomState(seed)
    return [PIL.Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(frames)]


class Models:
    """The tiny model folders, each built on first use and kept for the module; the vidcore pipelines loaded from
    them (one per class) and their plain runs."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, object] = {}
        self._pipes: dict[str, object] = {}
        self._plain: dict[str, torch.Tensor] = {}

    def _get(self, key):
        if key not in self._built:
            self._built[key] = getattr(self, f"_build_{key}")()
        return self._built[key]

    # -- folders ------------------------------------------------------------------------------------
    def _build_t2v(self):
        tiny.build_tiny_t2v_pipeline(self.root / "t2v")
        return self.root / "t2v"

    def _build_i2vgen(self):
        tiny.build_tiny_i2vgen_pipeline(self.root / "i2vgen")
        return self.root / "i2vgen"

    def _build_svd(self):
        tiny.build_tiny_svd_pipeline(self.root / "svd")
        return self.root / "svd"

    def _build_sd15(self):  # SD1.5 folder + motion adapter: AnimateDiff, Text2Video-Zero, ControlledVideo
        return ta.build_tiny_animatediff(self.root / "sd15")

    def _build_controlnet(self):
        from diffusers import ControlNetModel

        tiny.randomize_(ControlNetModel(**tc.tiny_controlnet_config()), 10).eval().save_pretrained(
            self.root / "controlnet")
        return self.root / "controlnet"

    def _build_sparse(self):
        from diffusers import SparseControlNetModel

        tiny.randomize_(SparseControlNetModel(**tc.tiny_sparse_config("scribble")), 11).eval().save_pretrained(
            self.root / "sparse")
        return self.root / "sparse"

    def _build_sdxl(self):
        return tiny_sdxl.build_tiny_animatediff_sdxl(self.root / "sdxl")

    def _build_pix2pix(self):
        tiny_zero.build_tiny_pix2pix(self.root / "pix2pix")
        return self.root / "pix2pix"

    def _build_ip15(self):
        return write_ip_adapter_repo(self.root / "ip15", self._get("sd15").pipe.unet)

    def _build_ipxl(self):
        return write_ip_adapter_repo(self.root / "ipxl", self._get("sdxl").pipe.unet, prefix="sdxl")

    def _build_lora15(self):
        path = self.root / "motion-lora-sd15.safetensors"
        save_file(ta.motion_lora(self._get("sd15").pipe.unet), str(path))
        return path

    def _build_loraxl(self):
        path = self.root / "motion-lora-sdxl.safetensors"
        save_file(ta.motion_lora(self._get("sdxl").pipe.unet), str(path))
        return path

    # -- pipelines ----------------------------------------------------------------------------------
    def _load(self, name):
        cls = pipeline_class(name)
        if name in ("TextToVideoPipeline", "VideoToVideoPipeline"):
            return cls.from_pretrained(self._get("t2v"))
        if name == "I2VGenXLPipeline":
            return cls.from_pretrained(self._get("i2vgen"))
        if name == "StableVideoDiffusionPipeline":
            return cls.from_pretrained(self._get("svd"))
        if name == "AnimateDiffSDXLPipeline":
            xl = self._get("sdxl")
            return cls.from_pretrained(xl.sdxl, motion_adapter=xl.adapter)
        if name == "VideoInstructPix2PixPipeline":
            return cls.from_pretrained(self._get("pix2pix"))
        sd15 = self._get("sd15")
        if name == "TextToVideoZeroPipeline":
            return cls.from_pretrained(sd15.sd)
        if name == "ControlledVideoPipeline":
            return cls.from_pretrained(sd15.sd, controlnet=self._get("controlnet"))
        extra = {}
        if name == "AnimateDiffControlNetPipeline":
            extra["controlnet"] = self._get("controlnet")
        elif name == "AnimateDiffSparseControlNetPipeline":
            extra["controlnet"] = self._get("sparse")
        return cls.from_pretrained(sd15.sd, motion_adapter=sd15.adapter, **extra)

    def pipe(self, name):
        if name not in self._pipes:
            pipe = self._load(name)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[name] = pipe
        return self._pipes[name]

    def ip_adapter(self, name):
        """(repo, weight_name) of an IP-Adapter that fits ``name``'s UNet."""
        if name == "AnimateDiffSDXLPipeline":
            return self._get("ipxl"), "ip-adapter_sdxl.safetensors"
        return self._get("ip15"), "ip-adapter_sd15.safetensors"

    def lora(self, name):
        if name in TRAINED_LORAS:  # no hub motion LoRA fits these UNets: one trained (randomly) with vidcore.training
            key = TRAINED_LORAS[name]
            if key not in self._built:
                self._built[key] = self._trained_lora(self.root / f"{key}.safetensors", self.pipe(name).unet)
            return self._built[key]
        return self._get("loraxl" if name == "AnimateDiffSDXLPipeline" else "lora15")

    @staticmethod
    def _trained_lora(path, unet):
        """A temporal-layer LoRA file for ``unet`` with random non-zero weights; ``unet`` is left as it was."""
        from vidcore.training import LoRAConfig, add_lora, lora_layers, remove_lora, save_lora

        add_lora(unet, LoRAConfig(rank=2, target="temporal"))
        try:
            g = torch.Generator().manual_seed(7)
            with torch.no_grad():
                for _, linear in lora_layers(unet):
                    linear.lora.up.weight.copy_(torch.randn(linear.lora.up.weight.shape, generator=g) * 0.5)
            return save_lora(unet, path)
        finally:
            remove_lora(unet)

    def run(self, name, seed=0, **extra):
        kwargs = {**CALLS[name](), "num_inference_steps": STEPS, "output_type": "latent", **extra}
        torch.manual_seed(seed)  # in case a pipeline draws from the global generator
        out = self.pipe(name)(generator=torch.Generator().manual_seed(seed), **kwargs).frames
        assert isinstance(out, torch.Tensor)
        return out

    def plain(self, name):
        if name not in self._plain:
            out = self.run(name)
            assert torch.isfinite(out).all() and out.shape[0] == 1, out.shape
            self._plain[name] = out
        return self._plain[name]


# the smallest call of each pipeline (without steps, generator and output type)
CALLS = {
    "TextToVideoPipeline": lambda: dict(prompt="a cat", num_frames=FRAMES, height=16, width=16),
    "VideoToVideoPipeline": lambda: dict(prompt="a cat", video=_video(), strength=1.0),
    "I2VGenXLPipeline": lambda: dict(prompt="a cat", image=_image(), num_frames=FRAMES, height=16, width=16,
                                     image_latents_from_generator=True),
    "StableVideoDiffusionPipeline": lambda: dict(image=_image(), num_frames=FRAMES, height=16, width=16),
    "AnimateDiffPipeline": lambda: dict(prompt="a cat", num_frames=FRAMES, height=16, width=16),
    "AnimateDiffVideoToVideoPipeline": lambda: dict(prompt="a cat", video=_video(), height=16, width=16,
                                                    strength=1.0),
    "AnimateDiffControlNetPipeline": lambda: dict(prompt="a cat", num_frames=FRAMES, height=16, width=16,
                                                  conditioning_frames=tc.random_control_frames(FRAMES, 16, 16)),
    "AnimateDiffSparseControlNetPipeline": lambda: dict(
        prompt="a cat", num_frames=FRAMES, height=16, width=16,
        conditioning_frames=tc.random_control_frames(2, 16, 16, seed=3), controlnet_frame_indices=[0, FRAMES - 1]),
    "AnimateDiffSDXLPipeline": lambda: dict(prompt="a cat", num_frames=FRAMES, height=16, width=16),
    "TextToVideoZeroPipeline": lambda: dict(prompt="a cat", video_length=FRAMES, height=16, width=16, t0=0, t1=1),
    "ControlledVideoPipeline": lambda: dict(prompt="a cat",
                                            conditioning_frames=tc.random_control_frames(FRAMES, 16, 16)),
    "VideoInstructPix2PixPipeline": lambda: dict(prompt="make it snowy", video=_video()),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Models(tmp_path_factory.mktemp("features"))


def _ran(out, plain):
    """A run of the feature: finite, the plain run's shape."""
    assert out.shape == plain.shape, (out.shape, plain.shape)
    assert torch.isfinite(out).all()


def _changed(out, plain, atol=1e-4):
    _ran(out, plain)
    assert (out - plain).abs().max() > atol, "the feature left the video unchanged"


# -- "yes" cells: each feature runs ---------------------------------------------------------------

def yes_context_windows(models, name):
    plain = models.plain(name)
    # one window over the whole video is the plain run; shorter windows give another, valid video
    assert torch.equal(models.run(name, context_length=FRAMES), plain)
    _changed(models.run(name, context_length=2, context_stride=1), plain)


def yes_free_noise(models, name):
    pipe, plain = models.pipe(name), models.plain(name)
    pipe.enable_free_noise(context_length=2, context_stride=1)
    try:
        assert pipe.free_noise_enabled
        _changed(models.run(name), plain)  # 4 frames in windows of 2: FreeNoise acts
    finally:
        pipe.disable_free_noise()
    assert not pipe.free_noise_enabled


def yes_prompt_travel(models, name):
    pipe, plain = models.pipe(name), models.plain(name)
    if name == "TextToVideoZeroPipeline":  # its own schedule, no FreeNoise; one key is the plain prompt
        assert (models.run(name, prompt={0: "a cat"}) - plain).abs().max() < 1e-4
        _changed(models.run(name, prompt={0: "a cat", FRAMES - 1: "a dog"}), plain)
        return
    with pytest.raises(ValueError, match=r"needs pipe.enable_free_noise\(\) first"):  # FreeNoise's prompt encoding
        models.run(name, prompt={0: "a cat", 2: "a dog"})
    pipe.enable_free_noise(context_length=2, context_stride=1)
    try:
        windowed = models.run(name)
        same = models.run(name, prompt={0: "a cat", 2: "a cat"})  # a schedule of one prompt is that prompt
        assert (same - windowed).abs().max() < 1e-4
        _changed(models.run(name, prompt={0: "a cat", 2: "a dog"}), windowed)
    finally:
        pipe.disable_free_noise()


def yes_free_init(models, name):
    pipe, plain = models.pipe(name), models.plain(name)
    pipe.enable_free_init(num_iters=1)  # one round is the plain run
    try:
        assert pipe.free_init_enabled
        assert torch.equal(models.run(name), plain)
        pipe.enable_free_init(num_iters=2)
        _changed(models.run(name), plain)
    finally:
        pipe.disable_free_init()


def yes_step_cache(models, name):
    pipe, plain = models.pipe(name), models.plain(name)
    pipe.enable_deep_cache(cache_interval=1, cache_branch_id=0)  # every step in full: the plain run
    try:
        assert torch.equal(models.run(name), plain)
        pipe.enable_deep_cache(cache_interval=2, cache_branch_id=0)
        out = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS, output_type="latent",
                   **CALLS[name]())
        _changed(out.frames, plain)  # step 1 reused step 0's deep features
        assert out.cache_stats["cached"] > 0, out.cache_stats
    finally:
        pipe.disable_deep_cache()
    pipe.enable_block_cache(threshold=0.0)  # never reuses: the plain run
    try:
        assert torch.equal(models.run(name), plain)
    finally:
        pipe.disable_block_cache()
    assert pipe.cache_stats() is None


def _constructed_in(path: Path) -> set[str]:
    """Class names a test file builds: ``[module.]Name(...)`` and ``[module.]Name.from_pretrained(...)``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "from_pretrained":
                func = func.value
            names.add(func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else "")
    return names


def yes_parallel(models, name):
    # Sampling across processes needs torch.distributed; tests/test_parallel.py already runs every parallel
    # pipeline in spawned gloo processes against the single-process run. Here (no new processes): the class is
    # one that test_parallel.py exercises, and the switch is a real method of the pipeline.
    assert name in _constructed_in(TESTS / "test_parallel.py"), f"tests/test_parallel.py does not exercise {name}"
    pipe = models.pipe(name)
    assert inspect.ismethod(pipe.enable_parallel) and inspect.ismethod(pipe.disable_parallel)
    assert pipe.parallel is None


def yes_ip_adapter(models, name):
    pipe, plain = models.pipe(name), models.plain(name)
    repo, weight_name = models.ip_adapter(name)
    encoder = pipe.image_encoder
    pipe.load_ip_adapter(repo, subfolder="models", weight_name=weight_name)
    try:
        _changed(models.run(name, ip_adapter_image=_image(2)), plain, atol=1e-3)
        pipe.set_ip_adapter_scale(0.0)  # scale 0 is the plain model
        assert (models.run(name, ip_adapter_image=_image(2)) - plain).abs().max() < 1e-5
    finally:
        pipe.unload_ip_adapter()
    assert not pipe.ip_adapters and pipe.image_encoder is encoder


def yes_lora(models, name):
    pipe, plain = models.pipe(name), models.plain(name)
    pipe.load_lora_weights(models.lora(name), adapter_name="motion")
    try:
        assert pipe.get_active_adapters() == ["motion"]
        _changed(models.run(name), plain)
    finally:
        pipe.unload_lora_weights()
    assert pipe.get_list_adapters() == {}
    assert torch.equal(models.run(name), plain)  # unloading gives the weights back


def yes_motion_scale(models, name):
    plain = models.plain(name)
    assert torch.equal(models.run(name, motion_scale=1.0), plain)  # 1 is the model as trained
    _changed(models.run(name, motion_scale=0.5), plain)


def yes_keyframes(models, name):
    plain = models.plain(name)
    assert torch.equal(models.run(name, last_image=None), plain)
    _changed(models.run(name, last_image=_image(3)), plain)


@pytest.mark.parametrize("name,feature", YES, ids=[f"{p}-{f}" for p, f in YES])
def test_yes_cell_runs(models, name, feature):
    globals()[f"yes_{feature}"](models, name)


# -- "no" cells: each is refused ------------------------------------------------------------------


@pytest.mark.parametrize("name,feature", NO, ids=[f"{p}-{f}" for p, f in NO])
def test_no_cell_is_refused(models, name, feature):
    cls = pipeline_class(name)
    params = inspect.signature(cls.__call__).parameters
    if SWITCHES_OF[feature]:
        pipe = models.pipe(name)
        for switch in SWITCHES_OF[feature]:
            with pytest.raises(UnsupportedFeatureError, match=f"{name} has no {FEATURES[feature].title}"):
                getattr(pipe, switch)()
            with pytest.raises(ValueError):
                getattr(pipe, switch)()
            with pytest.raises(NotImplementedError):
                getattr(pipe, switch)()
            assert not hasattr(pipe, switch), switch
    elif feature in ARGUMENTS:
        argument = ARGUMENTS[feature]
        assert argument not in params
        value = {"last_image": _image(3)}.get(argument, 2)
        with pytest.raises(TypeError, match=argument):
            models.pipe(name)(**CALLS[name](), **{argument: value})
    elif feature == "prompt_travel":
        if "prompt" not in params:  # SVD: no text prompt at all
            with pytest.raises(TypeError, match="prompt"):
                models.pipe(name)(**CALLS[name](), prompt={0: "a cat", 2: "a dog"})
        else:
            # every pipeline with a text prompt and no prompt travel refuses a schedule the same way
            # (SDVideoPipeline.check_inputs / ControlledVideoPipeline's own prompt check: require(...))
            with pytest.raises(UnsupportedFeatureError, match=f"{name} has no prompt travel"):
                models.run(name, prompt={0: "a cat", 2: "a dog"})
    else:
        pytest.fail(f"no check written for a missing {feature!r} (neither a switch nor a __call__ argument)")


# -- the table is derived, not declared -----------------------------------------------------------

def test_the_table_covers_every_pipeline_and_feature():
    assert list(TABLE) == list(PIPELINES)
    assert all(list(row) == list(FEATURES) for row in TABLE.values())
    assert set(SWITCHES.values()) <= set(FEATURES)
    for feature in FEATURES:  # every column has a yes check here, and a no check if some pipeline lacks it
        assert f"yes_{feature}" in globals()
        assert SWITCHES_OF[feature] or feature in ARGUMENTS or feature in ("prompt_travel", "step_cache")


def test_no_pipeline_class_declares_its_support():
    declared = []
    for path in sorted(PIPELINES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            for stmt in node.body:
                targets = (stmt.targets if isinstance(stmt, ast.Assign) else
                           [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
                for target in targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name) and (leaf.id.endswith("_support") or leaf.id == "capabilities"):
                            declared.append(f"{path.name}: {node.name}.{leaf.id}")
    assert not declared, declared
    # nor through a mixin from elsewhere
    for name in PIPELINES:
        cls = pipeline_class(name)
        attrs = [a for a in dir(cls) if a.endswith("_support") or a == "capabilities"]
        assert not attrs, (name, attrs)


# -- exclusions -----------------------------------------------------------------------------------

def test_exclusions_name_features():
    extra = {"frame_parallel", "block_cache"}
    for pair, reason in EXCLUSIONS.items():
        assert len(pair) == 2 and pair <= set(FEATURES) | extra, pair
        assert reason


@pytest.mark.parametrize("pair", list(EXCLUSIONS), ids=["+".join(sorted(p)) for p in EXCLUSIONS])
def test_check_combination_refuses_each_pair(pair):
    a, b = sorted(pair)
    with pytest.raises(UnsupportedFeatureError, match=f"{a} and {b} do not combine"):
        check_combination(object(), **{a: True, b: True})
    with pytest.raises(UnsupportedFeatureError):
        check_combination(object(), **{a: True, b: True, "step_cache": True})
    check_combination(object(), **{a: True, b: False})
    check_combination(object(), **{a: True})
    check_combination(object(), **{b: True})


@pytest.mark.parametrize("feature", sorted(set(FEATURES) | {"frame_parallel", "block_cache"}))
def test_a_single_feature_always_combines(feature):
    check_combination(object(), **{feature: True})
