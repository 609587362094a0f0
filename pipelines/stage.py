"""Run one stage of a recipe into a run dir; its inputs come from that run dir's ledger."""

import sys

from dreamray.orchestration.cli import stage_main

if __name__ == "__main__":
    sys.exit(stage_main(sys.argv[1:]))
