"""vidcore.loading: pipelines declare their component loaders and one implementation loads them all; the layer
order (models below loading below pipelines); the old import paths stay as aliases."""

from __future__ import annotations

import inspect
import json
import shutil

import pytest
import torch

import tiny
import vidcore
from vidcore.errors import ModelNotFoundError
from vidcore.loading import loaders as L
from vidcore.loading.pipeline import declared
from vidcore.pipelines.features import IMAGE_PIPELINES, PIPELINES, pipeline_class
from vidcore.pipelines.text_to_video import TextToVideoPipeline


@pytest.mark.parametrize("name", sorted({**PIPELINES, **IMAGE_PIPELINES}))
def test_every_pipeline_declares_a_loader_per_component(name):
    cls = pipeline_class(name)
    assert set(cls.component_names) <= set(cls.loaders), sorted(set(cls.component_names) - set(cls.loaders))
    for component, loader in cls.loaders.items():  # one signature: (folder, torch_dtype, variant)
        params = list(inspect.signature(loader).parameters)
        assert params[1:3] == ["torch_dtype", "variant"], (component, params)
    for component, loader in cls.arguments.items():  # (value, torch_dtype, variant, token)
        params = list(inspect.signature(loader).parameters)
        assert params[1:4] == ["torch_dtype", "variant", "token"], (component, params)
    # from_pretrained's body is the package's, not a copy per pipeline
    source = inspect.getsource(inspect.unwrap(cls.from_pretrained.__func__))
    assert "hub." not in source and "load_config" not in source
    if cls.single_file is not None:
        assert set(cls.single_file.components) <= set(cls.loaders)


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2v") / "pipe"
    tiny.build_tiny_t2v_pipeline(folder, variant_fp16=True)
    return folder


def with_extra(folder, tmp_path):
    """The pipeline folder plus a component ``refiner`` (a copy of its VAE), listed in model_index.json."""
    out = tmp_path / "with_extra"
    shutil.copytree(folder, out)
    shutil.copytree(out / "vae", out / "refiner")
    index = json.loads((out / "model_index.json").read_text())
    index["refiner"] = ["diffusers", "AutoencoderKL"]
    (out / "model_index.json").write_text(json.dumps(index))
    return out


def test_an_extra_declared_component_loads_through_the_same_code(t2v, tmp_path):
    calls = []

    def load_refiner(folder, torch_dtype=None, variant=None):
        calls.append((folder.name, torch_dtype, variant))
        return L.load_vidcore_model(folder, torch_dtype, variant)

    class RefinedTextToVideo(TextToVideoPipeline):
        component_names = (*TextToVideoPipeline.component_names, "refiner")
        loaders = {**TextToVideoPipeline.loaders, "refiner": load_refiner}

    folder = with_extra(t2v, tmp_path)
    pipe = RefinedTextToVideo.from_pretrained(folder, torch_dtype="fp16", variant="fp16")
    assert calls == [("refiner", torch.float16, "fp16")]
    assert isinstance(pipe.refiner, vidcore.AutoencoderKL) and pipe.refiner.dtype == torch.float16
    for a, b in zip(pipe.refiner.state_dict().values(), pipe.vae.state_dict().values()):
        assert torch.equal(a, b)
    # passed: not read; the other components still are
    mine = torch.nn.Identity()
    assert RefinedTextToVideo.from_pretrained(folder, refiner=mine).refiner is mine and len(calls) == 1
    with pytest.raises(TypeError, match=r"unexpected arguments for RefinedTextToVideo.from_pretrained: \['refinr'\]"):
        RefinedTextToVideo.from_pretrained(folder, refinr=mine)
    with pytest.raises(ModelNotFoundError, match="component 'refiner' is missing"):
        RefinedTextToVideo.from_pretrained(t2v)  # the plain folder has none
    assert "refiner" in declared(RefinedTextToVideo) and "refiner" not in declared(TextToVideoPipeline)


def test_pipeline_without_single_file_layout(t2v):
    with pytest.raises(TypeError, match="TextToVideoPipeline has no single-file layout"):
        TextToVideoPipeline.from_single_file(t2v / "unet" / "diffusion_pytorch_model.safetensors", config_from=t2v)


def test_old_import_paths_are_aliases():
    import vidcore.hub
    import vidcore.single_file
    from vidcore import loading
    from vidcore.loading import architectures, files, lora, models, originals, save
    from vidcore.pipelines import animatediff, animatediff_sdxl, base

    assert vidcore.load_model is loading.load_model is models.load_model
    assert vidcore.save_original is loading.save_original is save.save_original
    assert vidcore.load_sd_single_file is originals.load_sd_single_file
    assert vidcore.load_sdxl_single_file is animatediff_sdxl.load_sdxl_single_file is originals.load_sdxl_single_file
    assert vidcore.load_motion_lora is lora.load_motion_lora and vidcore.fuse_lora is lora.fuse_lora
    for name in ("save_native", "save_diffusers", "original_state_dict", "read_native", "architecture_of",
                 "load_model_with_info", "original_keymap", "BY_NAME", "BY_DIFFUSERS", "ORIGINAL_FORMATS",
                 "OriginalFormat", "read_single_file_raw"):
        assert hasattr(loading, name), name
    assert vidcore.single_file.read_single_file_raw is files.read_single_file_raw
    assert vidcore.single_file.fill is architectures.fill and vidcore.single_file.build_on_meta is architectures.build_on_meta
    assert animatediff.load_unet_motion is models.load_unet_motion
    assert base.load_image_encoder is L.load_image_encoder and base.load_tokenizer is L.load_tokenizer
    assert callable(vidcore.hub.resolve) and callable(vidcore.hub.load_state_dict)


def test_model_classes_load_themselves(t2v):
    """``UNet3D.from_pretrained(folder, subfolder="unet")`` is vidcore.load_model with a check of the class, as
    diffusers users write it; another class's folder is refused by name."""
    from vidcore.models.unet3d import UNet3D
    from vidcore.models.vae import AutoencoderKL

    unet = UNet3D.from_pretrained(t2v, subfolder="unet", torch_dtype=torch.float16)
    same = vidcore.load_model(t2v / "unet", torch_dtype=torch.float16)
    assert next(unet.parameters()).dtype == torch.float16
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), same.state_dict().values()))
    assert isinstance(AutoencoderKL.from_pretrained(t2v / "vae"), AutoencoderKL)
    with pytest.raises(TypeError, match="holds a UNet3D; AutoencoderKL.from_pretrained"):
        AutoencoderKL.from_pretrained(t2v, subfolder="unet")
