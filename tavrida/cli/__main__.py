"""``python -m tavrida.cli``: the ``tavrida`` command."""

import sys

from tavrida.cli import main

sys.exit(main())
