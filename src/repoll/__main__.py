"""``python -m repoll``: the ``repoll`` command."""

import sys

from repoll.cli._main import main

sys.exit(main())
