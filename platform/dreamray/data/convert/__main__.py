"""Entry point: `python -m dreamray.data.convert ...` (see `cli.py`)."""

import sys

from dreamray.data.convert.cli import main

sys.exit(main())
