"""The precompute executor: the frozen towers over every shard of its sources, on a Ray Data
actor pool, into feature shards (`dreamray.data.features`).

Each actor (`ShardFeatureWriter`, one per `scaling.num_workers`, with its CPUs and GPUs) loads
the towers once and writes one source shard's feature shard per call. The artifact dir is
written in place, one atomic feature shard at a time: a re-run after a failure keeps every
shard whose key still matches and makes the rest, and a shard made for other towers,
transforms or shard bytes is re-made (a stale cache is never read). `features.json` and
`results.json` come next; `stage.json` last.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dreamray.config.precompute_specs import PrecomputeSpec, PrecomputeStageSpec
from dreamray.contracts import PRECOMPUTE_KIND
from dreamray.data.features import FEATURES_SUFFIX, feature_path
from dreamray.data.mixing import shard_files
from dreamray.files import atomic_write_json
from dreamray.orchestration.context import StageContext, StageOutcome
from dreamray.orchestration.manifest import ManifestRecord, build_manifest, write_manifest

RESULTS_FILE = "results.json"


class ShardFeatureWriter:
    """The `map_batches` callable class: loads the towers once, then writes feature shards."""

    def __init__(self, spec: PrecomputeSpec, out_dir: str, use_gpu: bool) -> None:
        """Args:
        spec: the precompute spec.
        out_dir: the artifact dir.
        use_gpu: run the towers on this actor's GPU.
        """
        import torch

        from dreamray.data.feature_compute import TowerRunner

        device = torch.device("cuda") if use_gpu else torch.device("cpu")
        self.runner = TowerRunner(spec, device)
        self.out_dir = out_dir

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        """Shard units (columns source, root, shard) -> one result row each."""
        from dreamray.data.feature_compute import make_feature_shard

        results = []
        for source, root, shard in zip(batch["source"], batch["root"], batch["shard"],
                                       strict=True):
            result = make_feature_shard(self.runner, str(source), str(root), str(shard),
                                        self.out_dir)
            print(f"precompute: {result.status} {shard} ({result.rows} rows, "
                  f"{result.images} images, {result.seconds:.1f}s)", flush=True)
            results.append(asdict(result))
        return {key: [r[key] for r in results] for key in results[0]}


def shard_units(spec: PrecomputeSpec) -> list[dict[str, str]]:
    """One unit per shard of every source, in source order.

    Raises:
        FileNotFoundError: a source dir without parquet files (named).
    """
    units = []
    for source in spec.sources:
        files = shard_files(source.path)
        if not files:
            raise FileNotFoundError(f"precompute.sources {source.name!r}: no *.parquet under "
                                    f"{source.path}")
        units += [{"source": source.name, "root": source.path, "shard": f} for f in files]
    return units


def _run_pool(stage: PrecomputeStageSpec, units: list[dict], out_dir: str) -> list[dict]:
    import ray.data

    scaling = stage.scaling
    gpus = scaling.gpus_per_worker if scaling.use_gpu else 0
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    written = ds.map_batches(
        ShardFeatureWriter,
        fn_constructor_kwargs={"spec": stage.precompute, "out_dir": out_dir,
                               "use_gpu": scaling.use_gpu},
        batch_size=1,
        num_cpus=scaling.cpus_per_worker,
        num_gpus=gpus or None,
        compute=ray.data.ActorPoolStrategy(size=min(scaling.num_workers, len(units))),
    )
    return written.take_all()


def _remove_strays(out_dir: Path, units: list[dict]) -> list[str]:
    """Feature shards of shards that are no longer in any source (removed, not kept)."""
    wanted = {feature_path(out_dir, u["source"], u["root"], u["shard"]) for u in units}
    strays = [p for p in out_dir.rglob(f"*{FEATURES_SUFFIX}") if p not in wanted]
    for path in strays:
        path.unlink()
    return [str(p) for p in strays]


def _metrics(results: list[dict], seconds: float) -> dict[str, float]:
    made = [r for r in results if r["status"] != "kept"]
    images = sum(r["images"] for r in made)
    return {
        "shards": len(results),
        "shards_made": sum(r["status"] == "made" for r in results),
        "shards_remade": sum(r["status"] == "remade" for r in results),
        "shards_kept": sum(r["status"] == "kept" for r in results),
        "rows": sum(r["rows"] for r in made),
        "images": images,
        "unreadable_rows": sum(r["unreadable_rows"] for r in made),
        "images_per_s": images / seconds if seconds > 0 else 0.0,
    }


def run_precompute_stage(stage: PrecomputeStageSpec, ctx: StageContext) -> StageOutcome:
    """The precompute executor.

    Args:
        stage: the precompute stage.
        ctx: where the artifact goes (written in place; see the module docstring).

    Returns:
        The outcome; `metrics` count shards made, re-made and kept, rows, images and
        images/s of the towers.

    Raises:
        FileNotFoundError: a source without shards.
    """
    from dreamray.data.feature_compute import feature_info

    started = time.time()
    out_dir = Path(ctx.artifact_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    units = shard_units(stage.precompute)
    strays = _remove_strays(out_dir, units)
    results = sorted(_run_pool(stage, units, str(out_dir)), key=lambda r: (r["source"],
                                                                           r["shard"]))
    metrics = _metrics(results, time.time() - started)
    feature_info(stage.precompute).save(out_dir)
    atomic_write_json(out_dir / RESULTS_FILE, {"shards": results, "removed": strays})
    write_manifest(out_dir, build_manifest(out_dir, ManifestRecord(
        stage=ctx.name, kind=PRECOMPUTE_KIND, spec_hash=ctx.spec_hash, identity=ctx.identity,
        inputs=ctx.input_digests, metrics=metrics)))
    print(f"precompute {ctx.name}: {json.dumps(metrics)}", flush=True)
    return StageOutcome(artifact_dir=str(out_dir), metrics=metrics, started_at=started,
                        ended_at=time.time())
