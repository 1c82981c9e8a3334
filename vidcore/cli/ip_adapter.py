"""The IP-Adapter flags of ``vidcore generate`` (animatediff, text2video-zero, controlled): the options, their
checks, loading the adapter into a pipeline and the call argument, shared by the tasks that take them."""

from __future__ import annotations

from pathlib import Path

from .aliases import Options
from .common import UsageError, torch_dtype


def add_options(o: Options) -> None:
    o.add("--ip-adapter", default=None, metavar="PATH",
          help="IP-Adapter image prompt: an original weight file (.safetensors or .bin), local or on the hub as "
               "OWNER/REPO/SUBFOLDER/FILE (e.g. h94/IP-Adapter/models/ip-adapter_sd15.safetensors); its CLIP image "
               "encoder is read from the image_encoder folder next to the file (see --ip-image-encoder)")
    o.add("--ip-image-encoder", default=None, metavar="FOLDER",
          help="with --ip-adapter: its CLIP image encoder, a local folder or a folder of the adapter's hub repo "
               "(models/image_encoder for h94/IP-Adapter/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors)")
    o.add("--ip-image", default=None, metavar="IMG", help="the image prompt for --ip-adapter (file or http(s) URL)")
    o.add("--ip-scale", type=float, default=1.0, help="weight of the image prompt (0: none)")


def check(args) -> None:
    """The flag combinations, before anything is read or loaded."""
    if (args.ip_adapter is None) != (args.ip_image is None):
        raise UsageError("--ip-adapter and --ip-image go together: the adapter file and the image prompt")
    if args.ip_image_encoder is not None and args.ip_adapter is None:
        raise UsageError("--ip-image-encoder applies to an --ip-adapter")
    if args.ip_image is not None and "://" not in args.ip_image and not Path(args.ip_image).expanduser().is_file():
        raise UsageError(f"--ip-image: no such file: {args.ip_image}")


def load(pipe, args, dtype) -> None:
    """``pipe.load_ip_adapter`` for --ip-adapter (a local --ip-image-encoder folder is loaded here), then the scale."""
    if args.ip_adapter is None:
        return
    from ..pipelines.ip_adapter import split_location

    source, subfolder, weight_name = split_location(args.ip_adapter)
    encoder = args.ip_image_encoder
    try:
        if encoder is not None and Path(encoder).expanduser().is_dir():
            from ..loading.loaders import load_image_encoder

            pipe.image_encoder = load_image_encoder(Path(encoder).expanduser(), torch_dtype(dtype))
            encoder = None
        pipe.load_ip_adapter(source, subfolder=subfolder, weight_name=weight_name,
                             image_encoder_folder=encoder or "image_encoder")
    except ValueError as err:
        raise UsageError(f"--ip-adapter: {err}") from None
    pipe.set_ip_adapter_scale(args.ip_scale)


def call_arguments(args) -> dict:
    """``ip_adapter_image`` for the pipeline call (empty without --ip-image)."""
    if args.ip_image is None:
        return {}
    from ..io import load_image

    return {"ip_adapter_image": load_image(args.ip_image)}
