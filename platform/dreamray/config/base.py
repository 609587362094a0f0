"""The base of every recipe spec."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Base of every spec: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def duplicate_names(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted (for "duplicate ..." spec errors)."""
    seen = Counter(names)
    return sorted(n for n, count in seen.items() if count > 1)
