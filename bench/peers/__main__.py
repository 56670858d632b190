"""``python -m bench.peers``: see :func:`bench.peers.main`."""

import sys

from bench.peers import main

sys.exit(main())
