"""The `sweep:` section of a train stage: a Ray Tune search over dotted keys of the stage spec.

A swept stage is still one DAG node: each trial is the same train stage with the trial's values
set (`trial_stage`), and the best trial's artifact is the stage's artifact. Everything a sweep
can get wrong that is knowable from the recipe (a key that is not a field, a distribution over
a non-numeric field, a value the stage rejects, a metric the stage never reports) is a
validation error at its key path, reported with the recipe's other errors.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from dreamray.config.base import Spec
from dreamray.contracts import STEP_METRICS

# Keys a trial may not change: they decide the stage's inputs, its gang and its own search.
FIXED_SECTIONS = ("kind", "needs", "init", "scaling", "sweep")
# Reported only by steps that have supervised tokens / dream images (`train/loop.py`).
METRIC_NEEDS_MODE = {"lm_loss": "creation", "vm_loss": "comprehension"}
NUMERIC = (int, float)


class _Range(Spec):
    """A `[low, high]` range, low < high."""

    @staticmethod
    def _ordered(bounds: tuple[float, float]) -> tuple[float, float]:
        if not bounds[0] < bounds[1]:
            raise ValueError(f"expected [low, high] with low < high, got {list(bounds)}")
        return bounds


class LogUniform(_Range):
    """Log-uniform between two positive bounds (learning rates)."""

    loguniform: tuple[float, float]

    @field_validator("loguniform")
    @classmethod
    def _positive(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if bounds[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        return cls._ordered(bounds)

    def candidates(self) -> list[Any]:
        """The values the validator tries on the stage: both bounds."""
        return list(self.loguniform)


class Uniform(_Range):
    """Uniform between two bounds."""

    uniform: tuple[float, float]

    @field_validator("uniform")
    @classmethod
    def _check(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        return cls._ordered(bounds)

    def candidates(self) -> list[Any]:
        """The values the validator tries on the stage: both bounds."""
        return list(self.uniform)


class Choice(Spec):
    """One of a list of values, of any type the field takes."""

    choice: list[Any] = Field(min_length=1)

    def candidates(self) -> list[Any]:
        """The values the validator tries on the stage: every choice."""
        return list(self.choice)


def _distribution_tag(value: Any) -> str | None:
    if isinstance(value, Mapping) and len(value) == 1:
        return str(next(iter(value)))
    return next((t for t in ("loguniform", "uniform", "choice") if hasattr(value, t)), None)


Distribution = Annotated[
    Annotated[LogUniform, Tag("loguniform")]
    | Annotated[Uniform, Tag("uniform")]
    | Annotated[Choice, Tag("choice")],
    Discriminator(
        _distribution_tag,
        custom_error_type="sweep_distribution",
        custom_error_message="expected one of {loguniform: [low, high]}, "
        "{uniform: [low, high]}, {choice: [values]}",
    ),
]


class AshaSpec(Spec):
    """Asynchronous successive halving: trials below the rung's top 1/reduction_factor stop."""

    kind: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1, description="steps every trial runs before it may stop")
    reduction_factor: float = Field(2.0, gt=1.0)


class NoScheduler(Spec):
    """Every trial runs to its last step."""

    kind: Literal["none"] = "none"


class SweepSpec(Spec):
    """A random search over dotted keys of the stage (`optim.lr`, `loss.vm`, ...)."""

    space: dict[str, Distribution] = Field(min_length=1)
    num_samples: int = Field(ge=1, description="trials")
    metric: str = Field("loss", description="the reported step metric the winner is chosen by")
    mode: Literal["min", "max"] = "min"
    scheduler: AshaSpec | NoScheduler = Field(NoScheduler(), discriminator="kind")
    seed: int = 0
    max_concurrent: int | None = Field(
        None, ge=1, description="trials at once; default: as many as the free resources hold")

    @field_validator("metric")
    @classmethod
    def _reported(cls, metric: str) -> str:
        if metric not in STEP_METRICS:
            raise ValueError(f"{metric!r} is not a metric train steps report; "
                             f"known: {list(STEP_METRICS)}")
        return metric


def _strip_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def field_annotation(stage_cls: type[BaseModel], key: str) -> Any:
    """The type of a dotted key of a spec class (`optim.lr` -> float), Optional stripped.

    Args:
        stage_cls: the spec class the key is read on.
        key: a dotted path of nested spec fields.

    Returns:
        The leaf field's annotation.

    Raises:
        KeyError: with the reason, when the key is not a field (or runs through a non-spec).
    """
    owner: Any = stage_cls
    annotation: Any = None
    for part in key.split("."):
        if not (isinstance(owner, type) and issubclass(owner, BaseModel)):
            raise KeyError("not a field of the stage")
        if part not in owner.model_fields:
            raise KeyError("not a field of the stage")
        annotation = _strip_optional(owner.model_fields[part].annotation)
        owner = annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        raise KeyError("is a section, not a field: sweep one of its fields")
    return annotation


def trial_stage(stage: BaseModel, values: Mapping[str, Any]) -> Any:
    """The stage one trial trains: `stage` with each dotted key set, and no `sweep`.

    Args:
        stage: a train stage spec (with or without a sweep).
        values: dotted key -> value.

    Returns:
        A validated spec of the same class.

    Raises:
        ValidationError: if a value is not one the stage accepts.
    """
    data = stage.model_dump(exclude={"sweep"})
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = value
    return type(stage).model_validate(data)


def _error(loc: tuple[Any, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("sweep", message), loc=loc, input=value)


def _key_errors(stage: BaseModel, key: str, dist: Any) -> list[InitErrorDetails]:
    loc = ("sweep", "space", key)
    if key.split(".")[0] in FIXED_SECTIONS:
        return [_error(loc, "cannot be swept: a trial keeps the stage's kind, needs, init, "
                            "scaling and sweep", key)]
    try:
        annotation = field_annotation(type(stage), key)
    except KeyError as err:
        return [_error(loc, err.args[0], key)]
    if not isinstance(dist, Choice) and annotation not in NUMERIC:
        return [_error(loc, f"a {_distribution_tag(dist)} distribution needs a numeric field "
                            f"(int or float), not {annotation}; use choice", key)]
    for value in dist.candidates():
        try:
            trial_stage(stage, {key: value})
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return [_error(loc, f"{value!r} is not a value the stage accepts "
                                f"({where}: {first['msg']})", value)]
    return []


def _sweep_errors(stage: Any) -> list[InitErrorDetails]:
    sweep: SweepSpec = stage.sweep
    errors = [e for key, dist in sweep.space.items() for e in _key_errors(stage, key, dist)]
    mode = METRIC_NEEDS_MODE.get(sweep.metric)
    if mode is not None and stage.data.mode == mode:
        errors.append(_error(("sweep", "metric"), f"a data.mode {mode} stage never reports "
                                                  f"{sweep.metric}", sweep.metric))
    asha = sweep.scheduler
    if isinstance(asha, AshaSpec) and asha.grace_period >= stage.total_steps:
        errors.append(_error(("sweep", "scheduler", "grace_period"),
                             f"{asha.grace_period} is not below the stage's {stage.total_steps} "
                             "steps: ASHA could stop no trial", asha.grace_period))
    return errors


class SweptStage(Spec):
    """Base of a train stage that may carry a `sweep:` section.

    A stage without a sweep serialises exactly as before the section existed, so its identity
    (`model_dump_json`) is unchanged by this feature.
    """

    sweep: SweepSpec | None = None

    @model_validator(mode="after")
    def _check_sweep(self) -> SweptStage:
        if self.sweep is not None:
            errors = _sweep_errors(self)
            if errors:
                # Raised with per-key locations, so each line names `...sweep.space.<key>`.
                raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    @model_serializer(mode="wrap")
    def _omit_missing_sweep(self, handler: Any) -> Any:
        data = handler(self)
        if self.sweep is None and isinstance(data, dict):
            data.pop("sweep", None)
        return data
