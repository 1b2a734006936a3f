"""``python -m ios_tvm`` is the ``ios-tvm`` command line."""

import sys

from ios_tvm.cli import main

sys.exit(main())
