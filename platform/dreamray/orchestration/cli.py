"""Command lines of `pipelines/full_recipe.py` and `pipelines/stage.py`: parse, load, run.

Exit codes: 0 success, 1 a stage failed (or the run could not start: resources, run dir,
missing inputs), 2 a bad recipe or command line.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from dreamray.config import RecipeError, RecipeSpec, load_recipe, parse_overrides
from dreamray.orchestration.plan import describe_recipe

DEFAULT_RUN_DIR = "runs/default"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the full-recipe entry script."""
    parser = argparse.ArgumentParser(
        prog="full_recipe.py",
        description="Run a DreamLLM recipe DAG on Ray. Trailing key.path=value overrides apply "
        "to the recipe before validation.",
    )
    _common_arguments(parser)
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="run storage (path or URI)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved DAG and exit")
    parser.add_argument(
        "--shapes-only",
        action="store_true",
        help="with --dry-run: plan from config-only real architectures, not the model paths",
    )
    return parser


def build_stage_parser() -> argparse.ArgumentParser:
    """The argument parser of the one-stage entry script."""
    parser = argparse.ArgumentParser(
        prog="stage.py",
        description="Run one stage of a recipe into a run directory whose ledger already holds "
        "the stages it needs; prints the stage's artifact dir as the last line.",
    )
    _common_arguments(parser)
    parser.add_argument("--stage", required=True, help="the stage to run")
    parser.add_argument("--run-dir", required=True, help="run storage (path or URI)")
    return parser


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML")
    parser.add_argument("--address", default=None,
                        help="Ray address (default: the job's cluster, or ray.init's own rules)")
    parser.add_argument("--steal-lock", action="store_true",
                        help="take over the run dir's lease when its driver is gone (stale)")
    parser.add_argument("overrides", nargs="*", help="key.path=value")


def _load(path: str, overrides: Sequence[str], check_paths: bool) -> RecipeSpec | None:
    try:
        return load_recipe(path, parse_overrides(overrides), check_paths=check_paths)
    except RecipeError as err:
        print(err, file=sys.stderr)
        return None


def main(argv: list[str]) -> int:
    """`full_recipe.py`: plan (--dry-run) or run the whole recipe.

    Args:
        argv: the command line without the program name.

    Returns:
        The process exit code.
    """
    args = build_parser().parse_intermixed_args(argv)
    recipe = _load(args.recipe, args.overrides, check_paths=not args.shapes_only)
    if recipe is None:
        return 2
    if args.dry_run:
        print(describe_recipe(recipe, run_dir=args.run_dir, shapes_only=args.shapes_only))
        return 0
    return _run(recipe, args.run_dir, None, args.address, args.steal_lock)


def stage_main(argv: list[str]) -> int:
    """`stage.py`: run one stage; its inputs come from the run directory's ledger.

    Args:
        argv: the command line without the program name.

    Returns:
        The process exit code; on success the last stdout line is the artifact dir.
    """
    args = build_stage_parser().parse_intermixed_args(argv)
    recipe = _load(args.recipe, args.overrides, check_paths=False)
    if recipe is not None and args.stage not in recipe.stages:
        print(f"unknown stage {args.stage!r}; the recipe has {list(recipe.stages)}",
              file=sys.stderr)
        return 2
    recipe = recipe and _load(args.recipe, args.overrides, check_paths=True)
    if recipe is None:
        return 2
    return _run(recipe, args.run_dir, [args.stage], args.address, args.steal_lock)


def _run(recipe: RecipeSpec, run_dir: str, targets: list[str] | None,
         address: str | None, steal_lock: bool) -> int:
    # Imported here: planning (--dry-run) must not need Ray.
    import ray

    from dreamray.orchestration.context import error_line
    from dreamray.orchestration.executors import default_executors
    from dreamray.orchestration.lease import LeaseHeldError
    from dreamray.orchestration.ledger import Ledger, LedgerVersionError
    from dreamray.orchestration.ray_backend import RayBackend
    from dreamray.orchestration.runner import DagRunner, PreflightError, RunFailed
    from dreamray.orchestration.storage import RunStorage, StorageError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        # A run dir of another ledger version is refused before connecting to Ray.
        Ledger.open(RunStorage(run_dir), recipe.name)
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=True)
        runner = DagRunner(recipe, run_dir, RayBackend(recipe.name), default_executors(),
                           targets=targets, steal_lock=steal_lock)
        # `ray job stop` and a node's shutdown send SIGTERM: checkpoint, then exit
        signal.signal(signal.SIGTERM,
                      lambda *_: runner.request_stop("SIGTERM to the driver"))
        summary = runner.run()
    except (PreflightError, LedgerVersionError, StorageError, RunFailed, LeaseHeldError) as err:
        print(error_line(err), file=sys.stderr)
        return 1
    print(f"report: {summary.report}")
    if targets:
        print(summary.artifact(targets[-1]))
    return 0
