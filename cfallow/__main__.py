"""``python -m cfallow``."""

import sys

from cfallow.cli import main

sys.exit(main())
