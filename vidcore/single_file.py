"""Old home of single-file reading, kept as an alias: :mod:`vidcore.loading.files` (reading) and
:mod:`vidcore.loading.architectures` (build on meta, fill through a key map)."""

from .loading.architectures import build_on_meta, fill  # noqa: F401
from .loading.files import (config_from_source, read_config_from, read_single_file,  # noqa: F401
                            read_single_file_raw, strip_prefixes)
