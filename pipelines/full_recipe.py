"""Run a DreamLLM recipe DAG as one Ray job (or print its plan with --dry-run)."""

import sys

from dreamray.orchestration.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
