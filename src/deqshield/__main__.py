"""``python -m deqshield``: the same as the ``deqshield`` command."""

import sys

from deqshield.cli import main

sys.exit(main())
