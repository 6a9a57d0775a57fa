"""Allow `python -m clipnodule ...` (used by the Slicer modules to run work in a process)."""

import sys

from .cli import main

sys.exit(main())
