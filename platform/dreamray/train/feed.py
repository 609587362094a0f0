"""The worker's micro-batch feed: the stage's dataset shard through `dreamray.data`, with its
resumable position; or, for in-process tests and benchmarks, a plain iterator of batches.

Resume safety net: the dataset the driver built leaves out the positions consumed up to the
checkpoint it resumed from (`dreamray.orchestration.train_data.build_rank_dataset(resume=...)`).
After Ray Train restarts a worker group inside the same `fit()`, the dataset may have been
built from an older checkpoint than the one the workers restore; the positions the restored
checkpoint already consumed are then dropped here before batching, so no sample is ever
trained on twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch.distributed as dist

from dreamray.train.state import TrainState


class SkipConsumed:
    """A dataset shard that drops records whose `position` is already consumed."""

    def __init__(self, shard: Any, consumed: Any):
        """Args:
        shard: a Ray `DataIterator` (anything with `iter_batches`).
        consumed: a `RangeSet` of consumed positions.
        """
        self.shard, self.consumed = shard, consumed

    def iter_batches(self, **kwargs: Any) -> Iterator[Any]:
        """`shard.iter_batches(**kwargs)` (pyarrow format) without the consumed records."""
        for table in self.shard.iter_batches(**kwargs):
            positions = table.column("position").to_pylist()
            keep = np.array([p not in self.consumed for p in positions], dtype=bool)
            if keep.all():
                yield table
            elif keep.any():
                yield table.filter(keep)


class DataFeed:
    """This rank's micro-batches and where the stream stands."""

    def __init__(self, stage, run, session, state: TrainState, resume, batches=None):
        """Args:
        stage: the stage spec.
        run: the `RunInfo` (stage name, Ray metrics switch).
        session: the worker session (rank, world size, dataset shard).
        state: the loop state (skip counts are added to it).
        resume: the merged `DataState` of the restored checkpoint, or None.
        batches: an iterator of batch-contract dicts to use instead of the shard.
        """
        self.stage, self.session, self.loop_state = stage, session, state
        self.progress = None
        if batches is not None:
            self.batches: Iterator[Mapping[str, Any]] = iter(batches)
            return
        self.batches = self._pipeline(run, resume)

    def _pipeline(self, run, resume) -> Iterator[Mapping[str, Any]]:
        from dreamray.data.batches import iter_train_batches, make_collate_spec
        from dreamray.data.packing import stage_pack_pool
        from dreamray.data.pipeline import stage_fingerprint
        from dreamray.data.progress import DataProgress
        from dreamray.train.run import tokenizer_dir

        stage = self.stage
        spec = make_collate_spec(stage, tokenizer_dir(stage))
        self.progress = DataProgress(stage_fingerprint(stage.data), resume, self.session.rank)
        shard = self.session.dataset_shard()
        if resume is not None:
            shard = SkipConsumed(shard, resume.consumed)
        remaining = (stage.total_steps - self.loop_state.step) * stage.grad_accumulation_steps
        micro = stage.deepspeed.micro_batch_per_gpu
        it = iter_train_batches(
            shard, spec, micro, remaining, self.progress, pack_pool=stage_pack_pool(stage)
        )
        return self._accounted(it, _data_metrics(run, stage))

    def _accounted(self, it, metrics) -> Iterator[Mapping[str, Any]]:
        from dreamray.data.batches import DataExhaustedError

        try:
            for batch, info in it:
                self.loop_state.add_skipped(info.skipped)
                if metrics is not None:
                    metrics.record(info)
                yield batch
        except DataExhaustedError:
            # End the iterator: the loop then stops every rank together with a clear error,
            # instead of this rank dying while the others wait in a collective.
            return

    def state(self) -> Any:
        """This rank's `DataState` (None when batches do not come from the pipeline)."""
        return None if self.progress is None else self.progress.state

    def check_skips(self, final: bool) -> None:
        """Gang-wide `max_skip_fraction` check (collective; a no-op without the pipeline).

        Raises:
            DataSkipError: on every rank alike when too many samples were skipped.
        """
        if self.progress is None:
            return
        from dreamray.data.progress import DataCounters, check_skip_fraction

        mine = self.progress.state.counters.to_dict()
        gathered = [mine]
        if self.session.world_size > 1:
            gathered = [None] * self.session.world_size
            dist.all_gather_object(gathered, mine)
        merged = DataCounters()
        for counters in gathered:
            merged.add(DataCounters.from_dict(counters))
        check_skip_fraction(merged, self.stage.data.max_skip_fraction, final)


def _data_metrics(run, stage) -> Any:
    if not run.ray_metrics:
        return None
    from dreamray.data.telemetry import DataMetrics

    return DataMetrics(run.name, [s.name for s in stage.data.sources])
