"""``python -m ios_tvm`` is the ``ios-tvm`` command line."""

import sys

from .cli import main

sys.exit(main())
