"""``python -m mixlab``: the same as the ``mixlab`` command."""

import sys

from mixlab.cli import main

sys.exit(main())
