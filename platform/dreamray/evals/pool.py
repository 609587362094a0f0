"""A small generic Ray actor pool: N stateful workers, a list of work items, results as they come.

Evaluation work (feature extraction, image generation, answer generation) is embarrassingly
parallel: each actor loads its network once, then takes chunks of items; there are no
collectives, so a lost actor costs only its in-flight chunks. The worker classes are plain
classes (usable in-process too); the pool wraps them with `ray.remote` itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray


@dataclass(frozen=True)
class PoolOptions:
    """Resources of each actor and how much work each keeps queued."""

    num_actors: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    in_flight_per_actor: int = 2
    ray_options: dict[str, Any] = field(default_factory=dict)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray unless already connected.

    Args:
        address: a cluster address (`auto`, `ray://...`, `host:port`); None starts a local one.
        num_cpus: CPUs of a newly started local cluster (None: all of the machine's).
    """
    if ray.is_initialized():
        return
    if address is None:
        # "local" never attaches to a `ray start` cluster left running on the machine.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)


class WorkerStartError(RuntimeError):
    """A pool worker whose constructor raised (bad weights file, missing model, ...)."""


def method_name(worker_cls: type, method: Callable[..., Any]) -> str:
    """The name of `method`, checked to be a method of `worker_cls`.

    Pools are called with the method itself (`pool.map_unordered(FeatureWorker.stats, ...)`),
    so a rename is caught by the linter and a method of another class is refused here, before
    any work is sent.

    Raises:
        TypeError: `method` is not an attribute of `worker_cls` under its own name.
    """
    name = getattr(method, "__name__", None)
    if name is None or getattr(worker_cls, name, None) is not method:
        raise TypeError(f"{method!r} is not a method of {worker_cls.__name__}")
    return name


class ActorPool:
    """A fixed set of actors of one class, fed chunks of work."""

    def __init__(self, worker_cls: type, options: PoolOptions, *args: Any, **kwargs: Any) -> None:
        """Start the actors (their constructors run asynchronously).

        Args:
            worker_cls: a plain class; every actor is `worker_cls(*args, **kwargs)`.
            options: pool size and per-actor resources.
            *args, **kwargs: constructor arguments shared by every actor.

        Raises:
            ValueError: a pool of fewer than one actor.
        """
        if options.num_actors < 1:
            raise ValueError(f"an actor pool needs at least one actor, got {options.num_actors}")
        remote_cls = ray.remote(worker_cls).options(
            num_cpus=options.num_cpus, num_gpus=options.num_gpus, **options.ray_options
        )
        self.options = options
        self.worker_cls = worker_cls
        self.worker_name = worker_cls.__name__
        self.actors = [remote_cls.remote(*args, **kwargs) for _ in range(options.num_actors)]
        # Actors still starting; work only goes to started ones, so a pool larger than the
        # cluster (some actors never scheduled) still finishes instead of waiting forever.
        self._starting = {a.__ray_ready__.remote(): a for a in self.actors}
        self._ready: list[Any] = []

    def _started(self, ref: Any) -> Any:
        actor = self._starting.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError as err:
            raise WorkerStartError(f"{self.worker_name} actor failed to start: {err}") from err
        self._ready.append(actor)
        return actor

    def wait_started(self, count: int | None = None) -> int:
        """Block until `count` actors (default: all) have started; returns how many have.

        Raises:
            WorkerStartError: an actor's constructor failed.
        """
        target = len(self.actors) if count is None else min(count, len(self.actors))
        while len(self._ready) < target:
            done, _ = ray.wait(list(self._starting), num_returns=1)
            self._started(done[0])
        return len(self._ready)

    def call_ready(self, method: Callable[..., Any], *args: Any) -> list[Any]:
        """Call a method on every started actor (waiting for at least one) and return results.

        Args:
            method: the worker class's method (e.g. `FeatureWorker.info`).
            *args: its arguments.

        Raises:
            WorkerStartError: an actor's constructor failed.
            TypeError: `method` is not a method of the worker class.
        """
        name = method_name(self.worker_cls, method)
        self.wait_started(1)
        return ray.get([getattr(a, name).remote(*args) for a in self._ready])

    def map_unordered(
        self, method: Callable[..., Any], items: Sequence[Any]
    ) -> Iterator[tuple[int, Any]]:
        """Run `actor.method(item)` for every item, spread over the started actors.

        Args:
            method: the worker class's method (e.g. `FeatureWorker.stats`).
            items: one argument per call (typically a chunk of work).

        Yields:
            (index into items, result) in completion order.

        Raises:
            WorkerStartError: an actor's constructor failed.
            TypeError: `method` is not a method of the worker class.
        """
        method = method_name(self.worker_cls, method)
        slots = self.options.in_flight_per_actor
        queue = deque(enumerate(items))
        free = [a for a in self._ready for _ in range(slots)]
        pending: dict[Any, tuple[int, Any]] = {}
        while queue or pending:
            while queue and free:
                actor = free.pop()
                index, item = queue.popleft()
                pending[getattr(actor, method).remote(item)] = (index, actor)
            done, _ = ray.wait([*pending, *self._starting], num_returns=1)
            if done[0] in self._starting:
                free += [self._started(done[0])] * slots
                continue
            index, actor = pending.pop(done[0])
            free.append(actor)
            yield index, ray.get(done[0])

    def shutdown(self) -> None:
        """Kill the actors (their resources go back to the cluster)."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self._ready, self._starting = [], [], {}

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def chunked(items: Iterable[Any], size: int) -> list[list[Any]]:
    """Split items into consecutive lists of at most `size`.

    Raises:
        ValueError: size < 1.
    """
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)]


class LocalPool:
    """The `ActorPool` interface on one in-process worker (no Ray): for tests and tiny runs."""

    def __init__(self, worker_cls: type, *args: Any, **kwargs: Any) -> None:
        """Build the single worker `worker_cls(*args, **kwargs)`."""
        self.worker_cls = worker_cls
        self.worker = worker_cls(*args, **kwargs)

    def call_ready(self, method: Callable[..., Any], *args: Any) -> list[Any]:
        """Call one method on the worker; a one-element list, like `ActorPool.call_ready`."""
        return [getattr(self.worker, method_name(self.worker_cls, method))(*args)]

    def map_unordered(
        self, method: Callable[..., Any], items: Sequence[Any]
    ) -> Iterator[tuple[int, Any]]:
        """Run the method on every item in order; yields (index, result)."""
        name = method_name(self.worker_cls, method)
        for index, item in enumerate(items):
            yield index, getattr(self.worker, name)(item)

    def shutdown(self) -> None:
        """Drop the worker."""
        self.worker = None

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def make_pool(worker_cls: type, options: PoolOptions, *args: Any, **kwargs: Any) -> Any:
    """An `ActorPool`, or a `LocalPool` when `options.num_actors == 0`.

    Args:
        worker_cls: the plain worker class.
        options: pool options; `num_actors=0` means in-process, without Ray.
        *args, **kwargs: the worker's constructor arguments.

    Returns:
        A pool with `call_ready`, `map_unordered` and `shutdown` (and a context manager).
    """
    if options.num_actors == 0:
        return LocalPool(worker_cls, *args, **kwargs)
    return ActorPool(worker_cls, options, *args, **kwargs)
