"""The runner's view of the DAG while it runs: which stages are pending, running, finished.

Pure bookkeeping (no Ray, no storage), so the readiness rules are unit-testable on their own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from dreamray.config import RecipeSpec

State = Literal["pending", "running", "done", "skipped", "failed", "blocked", "external"]
FINISHED_OK = ("done", "skipped", "external")


class DagState:
    """The state of every stage of a run; stages outside the run's targets are `external`."""

    def __init__(self, recipe: RecipeSpec, targets: Iterable[str]):
        """Start with every target pending.

        Args:
            recipe: the validated recipe.
            targets: the stages this run executes; the others must already be complete.
        """
        self.recipe = recipe
        self.order = recipe.topological_order()
        wanted = set(targets)
        self.state: dict[str, State] = {
            n: ("pending" if n in wanted else "external") for n in self.order
        }

    def targets(self) -> list[str]:
        """Stages this run executes, in dependency order."""
        return [n for n in self.order if self.state[n] != "external"]

    def ready(self) -> list[str]:
        """Pending stages whose needs all finished successfully, in dependency order."""
        return [
            n for n in self.order
            if self.state[n] == "pending"
            and all(self.state[d] in FINISHED_OK for d in self.recipe.stages[n].needs)
        ]

    def set(self, name: str, state: State) -> None:
        """Move a stage to a new state; a failure blocks everything downstream still pending."""
        self.state[name] = state
        if state in ("failed", "blocked"):
            for other in self.order:
                needs = self.recipe.stages[other].needs
                if name in needs and self.state[other] == "pending":
                    self.set(other, "blocked")

    def running(self) -> list[str]:
        """Stages started and not finished."""
        return [n for n in self.order if self.state[n] == "running"]

    def unfinished(self) -> list[str]:
        """Stages pending or running."""
        return [n for n in self.order if self.state[n] in ("pending", "running")]

    def failed(self) -> list[str]:
        """Stages that failed or were blocked by a failure."""
        return [n for n in self.order if self.state[n] in ("failed", "blocked")]
