"""``python -m p2pupdate.cli``: the same as ``python -m p2pupdate``."""

import sys

from . import main

sys.exit(main())
