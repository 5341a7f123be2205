import sys

from ..launcher.faults import dump_modules
from .main import main

code = main()
dump_modules()  # a test hook: nothing unless P2PUPDATE_TEST_MODULES is set
sys.exit(code)
