"""`python -m dreamray.data.synthetic --out DIR --seed S [--faults] [--source NAME ...]`."""

import sys

from dreamray.data.synthetic.cli import main

sys.exit(main())
