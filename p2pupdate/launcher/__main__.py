"""``python -m p2pupdate.launcher``: the launcher process that ``p2pupdate node`` becomes
(:mod:`p2pupdate.launcher.main`); run ``p2pupdate node``, not this."""

import sys

from .main import main

sys.exit(main())
