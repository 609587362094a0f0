"""Command line of `pipelines/full_recipe.py`: parse, load the recipe, plan or run."""

from __future__ import annotations

import argparse
import sys

from dreamray.config import RecipeError, load_recipe, parse_overrides
from dreamray.orchestration.plan import describe_recipe


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the full-recipe entry script."""
    parser = argparse.ArgumentParser(
        prog="full_recipe.py",
        description="Run a DreamLLM recipe DAG on Ray. Trailing key.path=value overrides apply "
        "to the recipe before validation.",
    )
    parser.add_argument("--recipe", required=True, help="recipe YAML")
    parser.add_argument("--run-dir", default="runs/default", help="run storage (path or URI)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved DAG and exit")
    parser.add_argument(
        "--shapes-only",
        action="store_true",
        help="with --dry-run: plan from config-only real architectures, not the model paths",
    )
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    return parser


def main(argv: list[str]) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        recipe = load_recipe(args.recipe, overrides, check_paths=not args.shapes_only)
    except RecipeError as err:
        print(err, file=sys.stderr)
        return 2
    if args.dry_run:
        print(describe_recipe(recipe))
        return 0
    print("running a recipe needs the DAG runner (issue 7), which is not built yet; "
          "use --dry-run", file=sys.stderr)
    return 2
