"""Ray metrics of the training data stream (`dreamray_data_*`), fed once per micro-batch.

The train loop makes one `DataMetrics` per worker and calls `record(info)` with each batch's
`BatchInfo`; the returned rates are handy for its own logging. Exported (tag `stage` on all):

- counters: ``dreamray_data_samples`` {source}, ``dreamray_data_images`` {side: clip | sd},
  ``dreamray_data_tokens``, ``dreamray_data_skipped`` {reason}, ``dreamray_data_images_dropped``;
- gauges: ``dreamray_data_samples_per_s``, ``dreamray_data_images_per_s``,
  ``dreamray_data_tokens_per_s`` (over the last `window` batches) and
  ``dreamray_data_mix_fraction`` {source}: the realised share of each source so far.
"""

from __future__ import annotations

import time
from collections import Counter, deque

from dreamray.data.progress import BatchInfo

PREFIX = "dreamray_data_"


class DataMetrics:
    """One worker's data metrics."""

    def __init__(self, stage: str, sources: list[str], window: int = 50) -> None:
        """Args:
        stage: the stage name (a tag on every metric).
        sources: the data spec's source names (so every mix gauge exists from the start).
        window: batches the rates are averaged over.
        """
        from ray.util import metrics

        self._tags = {"stage": stage}
        keys = ("stage",)
        self.samples = metrics.Counter(PREFIX + "samples", "trainable samples", keys + ("source",))
        self.images = metrics.Counter(PREFIX + "images", "images transformed", keys + ("side",))
        self.tokens = metrics.Counter(PREFIX + "tokens", "non-pad tokens", keys)
        self.skipped = metrics.Counter(PREFIX + "skipped", "samples skipped", keys + ("reason",))
        self.dropped = metrics.Counter(PREFIX + "images_dropped", "images over the limit", keys)
        self.rates = {
            name: metrics.Gauge(PREFIX + name, f"{name} over the last {window} batches", keys)
            for name in ("samples_per_s", "images_per_s", "tokens_per_s")
        }
        self.mix = metrics.Gauge(PREFIX + "mix_fraction", "realised share", keys + ("source",))
        self._per_source = Counter({s: 0 for s in sources})
        self._window: deque[tuple[float, int, int, int]] = deque(maxlen=window + 1)

    def record(self, info: BatchInfo, now: float | None = None) -> dict[str, float]:
        """Count one micro-batch.

        Args:
            info: the batch's accounting from `iter_train_batches`.
            now: timestamp (tests); default `time.monotonic()`.

        Returns:
            Current rates {samples_per_s, images_per_s, tokens_per_s} (0 until two batches).
        """
        images = info.num_clip_images + info.num_sd_images
        for source, n in Counter(info.sources).items():
            self.samples.inc(n, tags={**self._tags, "source": source})
        for side, n in (("clip", info.num_clip_images), ("sd", info.num_sd_images)):
            if n:
                self.images.inc(n, tags={**self._tags, "side": side})
        if info.num_tokens:
            self.tokens.inc(info.num_tokens, tags=self._tags)
        for reason, n in info.skipped.items():
            self.skipped.inc(n, tags={**self._tags, "reason": reason})
        if info.images_dropped:
            self.dropped.inc(info.images_dropped, tags=self._tags)
        self._per_source.update(info.sources)
        total = sum(self._per_source.values())
        for source, n in self._per_source.items():
            self.mix.set(n / total if total else 0.0, tags={**self._tags, "source": source})
        return self._update_rates(info, images, time.monotonic() if now is None else now)

    def _update_rates(self, info: BatchInfo, images: int, now: float) -> dict[str, float]:
        self._window.append((now, len(info.positions), images, info.num_tokens))
        span = now - self._window[0][0]
        rates = {"samples_per_s": 0.0, "images_per_s": 0.0, "tokens_per_s": 0.0}
        if len(self._window) > 1 and span > 0:
            # the oldest entry only marks the window's start: its counts came before it
            recent = list(self._window)[1:]
            for k, name in enumerate(rates, start=1):
                rates[name] = sum(entry[k] for entry in recent) / span
        for name, value in rates.items():
            self.rates[name].set(value, tags=self._tags)
        return rates
