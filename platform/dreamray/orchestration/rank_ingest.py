"""Ray Train ingest of the per-rank datasets, executed outside the training processes.

Each rank reads its own dataset (`train_data.dataset_name(rank)`; nothing is split across
ranks). Ray Train's default for an unsplit dataset is `ds.iterator()`, which runs Ray Data's
streaming executor as a thread *inside* the training worker: its scheduling loop polls, takes
the GIL and costs the training thread ~20 % of a step at the tiny/bench sizes measured here
(py-spy: the executor thread had a third as many samples as the training thread). Here each
rank's dataset instead runs in its own `streaming_split(1)` coordinator actor (Ray Data's
mechanism for remote execution, as for a split dataset), placed by locality hint next to its
rank; the worker only pulls finished blocks.
"""

from __future__ import annotations

from typing import Any

from ray.train import DataConfig

from dreamray.orchestration.train_data import DATASET_PREFIX


def remote_iterator(dataset: Any, node_id: str | None = None) -> Any:
    """A `DataIterator` over all of `dataset`, in order, executed in a coordinator actor.

    Args:
        dataset: a `ray.data.Dataset` (its execution options are used as set).
        node_id: where the consumer runs (a locality hint for the blocks), or None.

    Returns:
        A picklable iterator that can be handed to one consumer process.
    """
    hints = [node_id] if node_id is not None else None
    (iterator,) = dataset.streaming_split(1, equal=False, locality_hints=hints)
    return iterator


class PerRankDataConfig(DataConfig):
    """Rank r gets `train_<r>` through `remote_iterator`; no dataset is split."""

    def __init__(self, execution_options: Any):
        """Args:
        execution_options: Ray Data execution options for every rank dataset (Ray Train
            replaces a dataset's own options with these).
        """
        super().__init__(datasets_to_split=[], execution_options=execution_options)

    def configure(
        self,
        datasets: dict[str, Any],
        world_size: int,
        worker_handles: Any,
        worker_node_ids: list[str] | None,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """One iterator per rank and dataset: the owner's runs remotely, the others are unused.

        Raises:
            ValueError: a dataset whose name is not `train_<rank>` for a rank of the gang.
        """
        out: list[dict[str, Any]] = [{} for _ in range(world_size)]
        for name, dataset in datasets.items():
            owner = _owner_rank(name, world_size)
            dataset = dataset.copy(dataset)
            dataset.context.execution_options = self._resolve_execution_options(name)
            for rank in range(world_size):
                node = worker_node_ids[rank] if worker_node_ids else None
                # non-owners never read it; a lazy local iterator starts nothing
                out[rank][name] = (remote_iterator(dataset, node) if rank == owner
                                   else dataset.iterator())
        return out


def _owner_rank(name: str, world_size: int) -> int:
    suffix = name.removeprefix(DATASET_PREFIX)
    if name == suffix or not suffix.isdigit() or int(suffix) >= world_size:
        raise ValueError(f"dataset {name!r} is not {DATASET_PREFIX}<rank> for a gang of "
                         f"{world_size}")
    return int(suffix)
