"""What the eval CLIs share: flags taken from spec fields, pool flags, and how a command ends.

A recipe's eval params (`CocoFidParams`, `VqaParams`) are the one home of a protocol's defaults
and choices. A CLI exposes a field as a flag named after it (`num_inference_steps` ->
`--num-inference-steps`, plus any older spelling as an alias) whose default, `Literal` choices
and help are the field's, and whose value lands under the field's name: the parsed arguments
then build the params, so a flag overrides a spec field by name and nothing is declared twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from dreamray.evals.pool import PoolOptions, ensure_ray

# The exit code of a run stopped by its input (a bad file, missing weights): no traceback.
BAD_INPUT_EXIT = 2


@dataclass(frozen=True)
class Flag:
    """One spec field as a command-line flag."""

    field: str
    aliases: tuple[str, ...] = ()  # other spellings that set the same field
    type: Callable[[str], Any] | None = None  # None: the field's scalar type
    required: bool | None = None  # None: required when the field has no default
    help: str | None = None  # None: the field's description

    @property
    def option(self) -> str:
        """The flag named after the field."""
        return "--" + self.field.replace("_", "-")


def add_spec_options(parser: Any, model: type[BaseModel], flags: Iterable[Flag]) -> None:
    """Add a flag per spec field, with the field's default, choices and description.

    Args:
        parser: an `argparse` parser or argument group.
        model: the spec (a pydantic model) whose fields the flags set.
        flags: the fields to expose.

    Raises:
        TypeError: a field whose type has no scalar form and no `Flag.type` (e.g. a list).
        KeyError: a field the spec does not have.
    """
    for flag in flags:
        info = model.model_fields[flag.field]
        required = info.is_required() if flag.required is None else flag.required
        default = None if required else info.get_default(call_default_factory=True)
        text = (flag.help or info.description or "").replace("%", "%%")  # argparse formats it
        parser.add_argument(
            flag.option,
            *flag.aliases,
            dest=flag.field,
            type=flag.type or _scalar_type(info.annotation, flag.field),
            choices=_literal_values(info.annotation),
            required=required,
            default=default,
            help=text if default is None else f"{text} (default: %(default)s)".lstrip(),
        )


def spec_values(args: argparse.Namespace, flags: Iterable[Flag]) -> dict[str, Any]:
    """The parsed values of the flags, by spec field name (keyword arguments of the spec)."""
    return {flag.field: getattr(args, flag.field) for flag in flags}


def add_pool_options(parser: argparse.ArgumentParser, num_actors: int) -> None:
    """Flags of the actor pool (`pool_from_args`) and of the Ray cluster (`--address`).

    Args:
        parser: the sub-command's parser.
        num_actors: the CLI's default pool size (0: in-process, no Ray).
    """
    parser.add_argument("--num-actors", type=int, default=num_actors, help="0: in-process, no Ray")
    parser.add_argument("--cpus-per-actor", type=float, default=PoolOptions.num_cpus)
    parser.add_argument("--gpus-per-actor", type=float, default=PoolOptions.num_gpus)
    parser.add_argument("--address", help="Ray cluster address (default: a new local cluster)")


def pool_from_args(args: argparse.Namespace) -> PoolOptions:
    """The actor pool described by `add_pool_options`' flags."""
    return PoolOptions(
        num_actors=args.num_actors, num_cpus=args.cpus_per_actor, num_gpus=args.gpus_per_actor
    )


def connect_if_pooled(pool: PoolOptions, address: str | None) -> None:
    """Connect to Ray (`address`, or a new local cluster) unless the pool runs in-process."""
    if pool.num_actors > 0:
        ensure_ray(address)


def run_command(command: Callable[[], Any], bad_input: tuple[type[BaseException], ...]) -> int:
    """Run a CLI command and print its result as JSON.

    Args:
        command: the command, all arguments bound.
        bad_input: the errors that are the input's fault: their message, no traceback.

    Returns:
        The exit code: 0, or `BAD_INPUT_EXIT` after one of `bad_input`.
    """
    try:
        result = command()
    except bad_input as err:
        print(f"error: {err}", file=sys.stderr)
        return BAD_INPUT_EXIT
    print(json.dumps(result, indent=2))
    return 0


def _literal_values(annotation: Any) -> tuple[Any, ...] | None:
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    inner = _without_none(annotation)
    return None if inner is annotation else _literal_values(inner)


def _scalar_type(annotation: Any, name: str) -> Callable[[str], Any]:
    values = _literal_values(annotation)
    if values:
        return type(values[0])
    inner = _without_none(annotation)
    if inner in (int, float, str):
        return inner
    raise TypeError(f"spec field {name} of type {annotation} needs a Flag.type to parse it")


def _without_none(annotation: Any) -> Any:
    # `X | None` -> X: a flag left out keeps the field's default, None included.
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation
