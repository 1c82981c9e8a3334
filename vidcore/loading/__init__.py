"""Loading: folders, hub ids, variants and single files -> vidcore modules and pipelines.

One concept per module:

* :mod:`~vidcore.loading.files`: reading one weight file safely (safetensors; pickles only through
  ``torch.load(weights_only=True)``), locating a model on disk, the config a ``config_from`` names;
* :mod:`~vidcore.loading.fetch`: hub downloads limited to what is loaded (configs, the weights read, variants);
* :mod:`~vidcore.loading.architectures`: what vidcore can build (architectures, key maps, original layouts) and
  the build-on-meta / fill-through-a-key-map steps every loader shares;
* :mod:`~vidcore.loading.originals`: original single files (ModelScope, VGen, sgm SVD, LDM SD/SDXL, AnimateDiff,
  ControlNet, SparseCtrl, IP-Adapter) -> modules;
* :mod:`~vidcore.loading.models`: ``load_model`` (any model checkpoint -> its module);
* :mod:`~vidcore.loading.save`: writing native, diffusers and original files atomically;
* :mod:`~vidcore.loading.lora`: motion-LoRA files;
* :mod:`~vidcore.loading.loaders`: per-component loaders with one signature, which pipelines declare;
* :mod:`~vidcore.loading.pipeline`: the one ``from_pretrained`` / ``from_single_file`` for every pipeline.

Hub access itself (repo ids -> local files, weight-file naming, state dicts) is :mod:`vidcore.hub`, below this
package. The names below are the package's public surface (and the old ``vidcore/loading.py`` module's).
"""

from .architectures import (ARCHITECTURES, BY_DIFFUSERS, BY_NAME, LDM_SD_COMPONENTS, NATIVE_WEIGHTS, ORIGINAL_FORMATS,
                            SGM_SVD_COMPONENTS, Architecture, OriginalFormat, architecture_for, architecture_of, build,
                            build_on_meta, fill, original_keymap)
from .files import read_single_file, read_single_file_raw, strip_prefixes
from .lora import load_lora, load_motion_lora
from .models import LoadedInfo, load_model, load_model_with_info, load_unet_motion, read_native
from .originals import (load_ip_adapter_file, load_motion_adapter_file, load_sd_single_file, load_sdxl_single_file,
                        load_svd_single_file)
from .save import original_state_dict, save_diffusers, save_native, save_original


__all__ = ["ARCHITECTURES", "BY_DIFFUSERS", "BY_NAME", "LDM_SD_COMPONENTS", "NATIVE_WEIGHTS", "ORIGINAL_FORMATS",
           "SGM_SVD_COMPONENTS", "Architecture", "LoadedInfo", "OriginalFormat", "architecture_for", "architecture_of",
           "build", "build_on_meta", "fill", "load_ip_adapter_file", "load_model", "load_model_with_info",
           "load_motion_adapter_file", "load_lora", "load_motion_lora", "load_sd_single_file", "load_sdxl_single_file",
           "load_svd_single_file", "load_unet_motion", "original_keymap", "original_state_dict", "read_native",
           "read_single_file", "read_single_file_raw", "save_diffusers", "save_native", "save_original",
           "strip_prefixes"]
