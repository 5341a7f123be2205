"""``python -m p2pupdate.launcher``: the launcher process that ``p2pupdate node`` becomes
(:mod:`p2pupdate.launcher.main`); run ``p2pupdate node``, not this.

Importing it does nothing (the daemon's self-test imports every module of its slot)."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
