"""``python -m cfallow``."""

import sys

from cfallow.cli.commands import main

sys.exit(main())
