"""``python -m spacenb``: the ``spacenb`` command (``serve``, ``demo``) without the script."""

import sys

from .cli import main

sys.exit(main())
