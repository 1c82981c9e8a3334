"""``python -m vidcore ...`` runs the ``vidcore`` command (see vidcore/cli/)."""

import sys

from vidcore.cli import main

if __name__ == "__main__":
    sys.exit(main())
