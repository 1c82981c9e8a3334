"""diffusers' names at vidcore's top level (issue #28, "Names"): ``DiffusionPipeline.from_pretrained`` picks the
pipeline class from ``model_index.json``, the schedulers load with ``from_pretrained(folder, subfolder=...)`` and
``from_config(pipe.scheduler.config)`` as diffusers' do, and the models load under diffusers' class names with
``.config`` fields named as diffusers names them. Checked against diffusers on tiny random folders."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

import tiny
import tiny_animatediff as ta
import vidcore
from vidcore.errors import ModelNotFoundError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    folder = tmp_path_factory.mktemp("names") / "t2v"
    return tiny.TinyPipeline(tiny.build_tiny_t2v_pipeline(folder, variant_fp16=True), folder)


@pytest.fixture(scope="module")
def animatediff(tmp_path_factory):
    return ta.build_tiny_animatediff(tmp_path_factory.mktemp("names-animatediff"))


def frames(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return np.asarray(pipe(generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).frames)


# -- DiffusionPipeline -------------------------------------------------------------------------------------


def test_text_to_video_folder(t2v):
    """diffusers' TextToVideoSDPipeline folder -> vidcore's TextToVideoPipeline, the frames of the class's own
    from_pretrained (and diffusers')."""
    pipe = vidcore.DiffusionPipeline.from_pretrained(t2v.folder)
    assert type(pipe) is vidcore.TextToVideoPipeline is vidcore.TextToVideoSDPipeline
    kwargs = dict(prompt="a red circle", num_frames=3, height=16, width=24, num_inference_steps=2)
    got = frames(pipe, **kwargs)
    np.testing.assert_array_equal(got, frames(vidcore.TextToVideoPipeline.from_pretrained(t2v.folder), **kwargs))
    expected = np.asarray(t2v.pipe(generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).frames)
    assert np.abs(expected - got).max() < 5e-5
    # keyword arguments reach the class's from_pretrained
    half = vidcore.DiffusionPipeline.from_pretrained(t2v.folder, torch_dtype=torch.float16, variant="fp16")
    assert half.unet.dtype == torch.float16


def test_video_to_video_folder(tmp_path):
    folder = tmp_path / "v2v"
    tiny.build_tiny_v2v_pipeline(folder)
    pipe = vidcore.DiffusionPipeline.from_pretrained(folder)
    assert type(pipe) is vidcore.VideoToVideoPipeline is vidcore.VideoToVideoSDPipeline


def test_svd_folder(tmp_path):
    folder = tmp_path / "svd"
    tiny.build_tiny_svd_pipeline(folder)
    pipe = vidcore.DiffusionPipeline.from_pretrained(folder)
    assert type(pipe) is vidcore.StableVideoDiffusionPipeline
    image = PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 52, 3), dtype=np.uint8))
    kwargs = dict(image=image, height=16, width=24, num_frames=3, num_inference_steps=2)
    np.testing.assert_array_equal(frames(pipe, **kwargs),
                                  frames(vidcore.StableVideoDiffusionPipeline.from_pretrained(folder), **kwargs))


def test_saved_animatediff_folder(animatediff, tmp_path):
    """diffusers' AnimateDiffPipeline.save_pretrained (unet/ a UNetMotionModel) -> vidcore's AnimateDiffPipeline."""
    folder = tmp_path / "saved"
    animatediff.pipe.save_pretrained(folder)
    tiny.make_tiny_tokenizer(folder / "tokenizer")
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "AnimateDiffPipeline"
    pipe = vidcore.DiffusionPipeline.from_pretrained(folder)
    assert type(pipe) is vidcore.AnimateDiffPipeline
    kwargs = dict(prompt="a", num_frames=3, height=8, width=16, num_inference_steps=2)
    got = frames(pipe, **kwargs)
    np.testing.assert_array_equal(got, frames(vidcore.AnimateDiffPipeline.from_pretrained(folder), **kwargs))
    expected = np.asarray(animatediff.pipe(generator=torch.Generator().manual_seed(0), output_type="np",
                                           **kwargs).frames)
    assert np.abs(expected - got).max() < 1e-4
    # UNetMotionModel: the saved unet/ folder on its own
    unet = vidcore.UNetMotionModel.from_pretrained(folder, subfolder="unet")
    assert isinstance(unet, vidcore.UNetMotion) and unet.config.in_channels == 4


def test_i2vgen_xl_folder(tmp_path):
    folder = tmp_path / "i2vgen"
    tiny.build_tiny_i2vgen_pipeline(folder)
    assert type(vidcore.DiffusionPipeline.from_pretrained(folder)) is vidcore.I2VGenXLPipeline


def test_text2video_zero_folder(tmp_path):
    """A saved TextToVideoZeroPipeline names itself in model_index.json (an SD folder with another _class_name)."""
    import tiny_zero

    folder = tmp_path / "zero"
    tiny_zero.build_tiny_sd(folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "TextToVideoZeroPipeline"}))
    assert type(vidcore.DiffusionPipeline.from_pretrained(folder)) is vidcore.TextToVideoZeroPipeline


@pytest.mark.parametrize("class_name", ["StableDiffusionXLPipeline", "StableDiffusionImg2ImgPipeline"])
def test_unknown_class_name_names_the_supported_ones(tmp_path, class_name):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    with pytest.raises(ValueError, match=class_name) as err:
        vidcore.DiffusionPipeline.from_pretrained(tmp_path)
    assert "TextToVideoSDPipeline" in str(err.value) and "AnimateDiffPipeline" in str(err.value)


def test_not_a_pipeline_folder(tmp_path, offline):
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        vidcore.DiffusionPipeline.from_pretrained(tmp_path)


def test_every_mapped_class_is_a_top_level_pipeline():
    from vidcore.pipelines.auto import PIPELINES, pipeline_class

    for name in PIPELINES:
        cls = pipeline_class(name)
        assert getattr(vidcore, name, cls) is cls and callable(cls.from_pretrained)


# -- schedulers --------------------------------------------------------------------------------------------

SCHEDULERS = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "LCMScheduler", "TCDScheduler"]


@pytest.mark.parametrize("name", SCHEDULERS)
def test_scheduler_from_pretrained_matches_diffusers(animatediff, name):
    """AnimateDiff's recipe: ``XScheduler.from_pretrained(sd, subfolder="scheduler", beta_schedule="linear")``."""
    import diffusers

    overrides = dict(beta_schedule="linear", steps_offset=1)
    ours = getattr(vidcore, name).from_pretrained(animatediff.sd, subfolder="scheduler", **overrides)
    theirs = getattr(diffusers, name).from_pretrained(animatediff.sd, subfolder="scheduler", **overrides)
    assert type(ours).__name__ == name and ours.config.beta_schedule == "linear"
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=0)
    ours.set_timesteps(4)
    theirs.set_timesteps(4)
    torch.testing.assert_close(ours.timesteps.to(theirs.timesteps.dtype), theirs.timesteps)
    if name == "DDIMScheduler":  # one step, as the pipelines take it (vidcore's step returns the sample itself)
        sample, eps = torch.randn(2, 1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0)).unbind(0)
        t = theirs.timesteps[0]
        torch.testing.assert_close(ours.step(eps, t, sample), theirs.step(eps, t, sample).prev_sample)


def test_scheduler_from_config_of_a_pipeline(animatediff, t2v):
    """``DDIMScheduler.from_config(pipe.scheduler.config, ...)``: the SD folder's PNDM config says clip_sample=False,
    which DDIM keeps, as in diffusers."""
    import diffusers

    pipe = vidcore.AnimateDiffPipeline.from_pretrained(animatediff.sd, motion_adapter=animatediff.adapter)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    ours = vidcore.DDIMScheduler.from_config(pipe.scheduler.config, beta_schedule="linear")
    ref = diffusers.PNDMScheduler.from_pretrained(animatediff.sd, subfolder="scheduler")
    theirs = diffusers.DDIMScheduler.from_config(ref.config, beta_schedule="linear")
    for key in ours.config.field_names():
        assert getattr(ours.config, key) == theirs.config[key], key
    assert ours.config.clip_sample is False
    euler = vidcore.EulerDiscreteScheduler.from_config(
        vidcore.DiffusionPipeline.from_pretrained(t2v.folder).scheduler.config, timestep_spacing="trailing")
    assert euler.config.timestep_spacing == "trailing" and euler.config.beta_schedule == "scaled_linear"


# -- models ------------------------------------------------------------------------------------------------


def same_config(ours, theirs):
    """Every diffusers config key the vidcore config has reads the same (lists as tuples)."""
    from dataclasses import fields

    shared = [f.name for f in fields(ours.config) if f.name in theirs.config]
    assert len(shared) >= 5
    for key in shared:
        want = theirs.config[key]
        want = tuple(want) if isinstance(want, list) else want
        assert getattr(ours.config, key) == want, key


def test_models_under_diffusers_names(t2v, animatediff, tmp_path):
    import diffusers
    import tiny_controlnet

    unet3d = vidcore.UNet3DConditionModel.from_pretrained(t2v.folder, subfolder="unet")
    assert vidcore.UNet3DConditionModel is vidcore.UNet3D and isinstance(unet3d, vidcore.UNet3D)
    same_config(unet3d, t2v.pipe.unet)
    assert unet3d.config.in_channels == t2v.pipe.unet.config.in_channels
    half = vidcore.UNet3DConditionModel.from_pretrained(t2v.folder, subfolder="unet", torch_dtype=torch.float16,
                                                         variant="fp16")
    assert next(half.parameters()).dtype == torch.float16
    vae = vidcore.AutoencoderKL.from_pretrained(t2v.folder, subfolder="vae")
    same_config(vae, t2v.pipe.vae)

    unet2d = vidcore.UNet2DConditionModel.from_pretrained(animatediff.sd, subfolder="unet")
    assert isinstance(unet2d, vidcore.UNet2D)
    same_config(unet2d, diffusers.UNet2DConditionModel.from_pretrained(animatediff.sd, subfolder="unet"))
    adapter = vidcore.MotionAdapter.from_pretrained(animatediff.adapter)
    same_config(adapter, diffusers.MotionAdapter.from_pretrained(animatediff.adapter))

    controlnet = tiny.randomize_(diffusers.ControlNetModel(**tiny_controlnet.tiny_controlnet_config()), 5)
    controlnet.save_pretrained(tmp_path / "controlnet")
    ours = vidcore.ControlNetModel.from_pretrained(tmp_path / "controlnet")
    assert vidcore.ControlNetModel is vidcore.ControlNet and isinstance(ours, vidcore.ControlNet)
    same_config(ours, controlnet)

    i2v = tiny.randomize_(diffusers.I2VGenXLUNet(**tiny.tiny_i2vgen_unet_config()), 6)
    i2v.save_pretrained(tmp_path / "i2vgen" / "unet")
    ours = vidcore.I2VGenXLUNet.from_pretrained(tmp_path / "i2vgen", subfolder="unet")
    assert type(ours) is vidcore.I2VGenXLUNet
    same_config(ours, i2v)


def test_svd_models_under_diffusers_names(tmp_path):
    import diffusers

    svd = tiny.build_tiny_svd_pipeline(tmp_path / "svd")
    unet = vidcore.UNetSpatioTemporalConditionModel.from_pretrained(tmp_path / "svd", subfolder="unet")
    assert type(unet).__name__ == "SVDUNet"
    same_config(unet, svd.unet)
    vae = vidcore.AutoencoderKLTemporalDecoder.from_pretrained(tmp_path / "svd", subfolder="vae")
    assert isinstance(vae, vidcore.AutoencoderKLTemporalDecoder)
    same_config(vae, svd.vae)
    assert diffusers.AutoencoderKLTemporalDecoder.__name__ == type(vae).__name__


def test_aliases_are_the_same_objects():
    for alias, name in vidcore.ALIASES.items():
        assert getattr(vidcore, alias).__name__ == name
