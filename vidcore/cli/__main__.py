"""``python -m vidcore.cli ...`` (as torchrun launches it) runs the ``vidcore`` command."""

import sys

from . import main

sys.exit(main())
