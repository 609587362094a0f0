"""Run a conversion: plan work units, fan them out as Ray tasks (or run them in process), then
write the manifest and the rejects and move the finished directory into place.

The output is built in a sibling temp directory and renamed at the end, so an output directory
either is complete (has its manifest) or does not exist.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import ray
from tqdm import tqdm

from dreamray.data.convert.base import ReadContext, load_json_list
from dreamray.data.convert.metrics import format_summary, record_rows, record_run
from dreamray.data.convert.registry import get_converter
from dreamray.data.convert.writer import ShardOptions, UnitResult, WorkUnit, convert_unit
from dreamray.data.manifest import (
    MANIFEST_NAME,
    build_manifest,
    check_accounting,
    write_outputs,
)
from dreamray.files import atomic_dir


class BadInputError(RuntimeError):
    """Input files could not be read (the message names each file and its error)."""


@dataclass(frozen=True)
class ConvertRequest:
    """One conversion run.

    Attributes:
        converter: a key of `registry.CONVERTERS`.
        inputs: input files (or directories, for converters that expand them).
        output: the output directory (must not exist unless `overwrite`).
        ctx: read context (its `source` must be one of the converter's sources).
        shard_options: how shards are cut.
        skip_bad_files: record unreadable files in the manifest instead of failing.
        overwrite: replace an existing output directory.
        split_rows: JSON-list sources: records per task (0: one task per file).
        max_parallel: tasks in flight at most (None: all at once; Ray's CPUs limit them).
        use_ray: fan out as Ray tasks (False: one unit after another in this process).
        progress: show a progress bar.
    """

    converter: str
    inputs: list[Path]
    output: Path
    ctx: ReadContext
    shard_options: ShardOptions = field(default_factory=ShardOptions)
    skip_bad_files: bool = False
    overwrite: bool = False
    split_rows: int = 0
    max_parallel: int | None = None
    use_ray: bool = True
    progress: bool = True


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray cluster unless this process is already connected to one.

    Args:
        num_cpus: CPUs of the local cluster (None: all of this machine's).
    """
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)


def _input_files(req: ConvertRequest) -> list[str]:
    files = get_converter(req.converter).list_inputs(list(req.inputs))
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not files:
        raise FileNotFoundError(f"input files not found: {missing or [str(i) for i in req.inputs]}")
    stems = [f.stem for f in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        # Ids are <source>/<file stem>/<key>: equal stems would give equal ids.
        raise ValueError(f"input file names must be unique (ids use them): {dupes}")
    return [str(f.resolve()) for f in files]


def plan_units(files: list[str], req: ConvertRequest) -> tuple[list[WorkUnit], list[UnitResult]]:
    """Split the inputs into work units.

    Args:
        files: resolved input files.
        req: the request (`split_rows` decides whether JSON lists are split).

    Returns:
        The units, and failed results for JSON files that could not even be loaded.
    """
    converter = get_converter(req.converter)
    units, failed = [], []
    for index, path in enumerate(files):
        splittable = converter.read_records is not None and Path(path).suffix == ".json"
        if not (splittable and req.split_rows > 0):
            units.append(WorkUnit(path, index))
            continue
        try:
            records = load_json_list(Path(path))
        except (OSError, ValueError, UnicodeDecodeError) as err:
            failed.append(UnitResult(path=path, part=0, error=f"{type(err).__name__}: {err}"))
            continue
        for part, start in enumerate(range(0, max(len(records), 1), req.split_rows)):
            chunk = records[start : start + req.split_rows]
            units.append(WorkUnit(path, index, part, chunk, start))
    return units, failed


@ray.remote(num_cpus=0)
class ProgressCounter:
    """Collects live row counts from the tasks for the drivers' progress bars, per run."""

    def __init__(self):
        self.counts: dict[str, list[int]] = {}

    def add(self, run: str, rows_in: int, rows_out: int) -> None:
        counts = self.counts.setdefault(run, [0, 0])
        counts[0] += rows_in
        counts[1] += rows_out

    def pop(self, run: str, remove: bool) -> tuple[int, int]:
        counts = self.counts.pop(run, [0, 0]) if remove else self.counts.setdefault(run, [0, 0])
        return counts[0], counts[1]


# One counter per Ray job in this process: starting an actor costs about a second of CPU,
# too much to pay per conversion (the tiny data runs eight).
_COUNTERS: dict[str, ray.actor.ActorHandle] = {}


def _progress_counter() -> ray.actor.ActorHandle:
    job = ray.get_runtime_context().get_job_id()
    if job not in _COUNTERS:
        _COUNTERS.clear()
        _COUNTERS[job] = ProgressCounter.remote()
    return _COUNTERS[job]


def _task_convert(unit, converter, ctx, out_dir, options, counter, run) -> UnitResult:
    def report(rows_in: int, rows_out: int, rejected: dict) -> None:
        counter.add.remote(run, rows_in, rows_out)
        record_rows(ctx.source, rows_in, rows_out, rejected)

    return convert_unit(unit, converter, ctx, out_dir, options, report)


_remote_convert = ray.remote(num_cpus=1)(_task_convert)


def _run_ray(units: list[WorkUnit], req: ConvertRequest, out_dir: Path, bar) -> list[UnitResult]:
    counter, run = _progress_counter(), uuid.uuid4().hex
    limit = req.max_parallel or len(units)
    queue, pending, results = list(units), [], []
    while queue or pending:
        while queue and len(pending) < limit:
            pending.append(
                _remote_convert.remote(
                    queue.pop(0),
                    req.converter,
                    req.ctx,
                    str(out_dir),
                    req.shard_options,
                    counter,
                    run,
                )
            )
        done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
        results.extend(ray.get(done))
        rows_in, rows_out = ray.get(counter.pop.remote(run, False))
        bar.update(rows_in - bar.n)
        bar.set_postfix(written=rows_out, units=f"{len(results)}/{len(units)}")
        if _must_stop(results, req):
            for ref in pending:
                ray.cancel(ref, force=True)
            break
    counter.pop.remote(run, True)  # forget this run's counts
    return results


def _must_stop(results: list[UnitResult], req: ConvertRequest) -> bool:
    """Fail fast: without skip_bad_files, the first unreadable file ends the run."""
    return not req.skip_bad_files and any(r.error is not None for r in results)


def _run_local(units: list[WorkUnit], req: ConvertRequest, out_dir: Path, bar) -> list[UnitResult]:
    def report(rows_in: int, rows_out: int, rejected: dict) -> None:
        bar.update(rows_in)
        record_rows(req.ctx.source, rows_in, rows_out, rejected)

    results = []
    for unit in units:
        results.append(
            convert_unit(unit, req.converter, req.ctx, str(out_dir), req.shard_options, report)
        )
        if _must_stop(results, req):
            break
    return results


def _drop_failed_files(results: list[UnitResult], out_dir: Path, req: ConvertRequest) -> None:
    """Raise for failed files, or (skip mode) delete the shards their other units wrote."""
    failed = {r.path: r.error for r in results if r.error is not None}
    if not failed:
        return
    if not req.skip_bad_files:
        listing = "\n".join(f"  {p}: {e}" for p, e in failed.items())
        raise BadInputError(
            f"cannot read {len(failed)} input file(s):\n{listing}\n"
            "(use --skip-bad-files to skip them and record them in the manifest)"
        )
    for result in results:
        if result.path in failed:
            for shard in result.shards:
                (out_dir / shard["path"]).unlink(missing_ok=True)
            result.error = failed[result.path]


def _check_request(req: ConvertRequest) -> None:
    converter = get_converter(req.converter)
    if req.ctx.source not in converter.sources:
        raise ValueError(
            f"{req.converter} writes sources {converter.sources}, not {req.ctx.source!r}"
        )
    if converter.needs_images and req.ctx.images is None:
        raise ValueError(f"{req.converter} needs an image directory (--images)")
    if (req.output / MANIFEST_NAME).exists() and not req.overwrite:
        raise FileExistsError(f"{req.output} is already converted (pass overwrite to redo it)")


def run_conversion(req: ConvertRequest) -> dict:
    """Convert the request's inputs into a unified shard directory.

    Args:
        req: the request.

    Returns:
        The manifest (also written to `req.output/manifest.json`).

    Raises:
        BadInputError: when input files cannot be read and `skip_bad_files` is off.
        FileNotFoundError / FileExistsError / ValueError: for a bad request.
    """
    _check_request(req)
    start = time.perf_counter()
    files = _input_files(req)
    with atomic_dir(req.output) as tmp:
        units, results = plan_units(files, req)
        if not _must_stop(results, req):
            run = _run_ray if req.use_ray else _run_local
            desc = f"convert {req.ctx.source}"
            with tqdm(desc=desc, unit="row", disable=not req.progress) as bar:
                results += run(units, req, tmp, bar)
        _drop_failed_files(results, tmp, req)
        manifest = build_manifest(
            source=req.ctx.source,
            converter=req.converter,
            args=_args_record(req),
            inputs=files,
            results=results,
            seconds=time.perf_counter() - start,
        )
        check_accounting(manifest)
        rejects = [r for res in results if res.error is None for r in res.rejects]
        write_outputs(tmp, manifest, rejects)
    record_run(req.ctx.source, len(manifest["files_skipped"]), manifest["rows_per_second"])
    return manifest


def _args_record(req: ConvertRequest) -> dict:
    return {
        "converter": req.converter,
        "inputs": [str(p) for p in req.inputs],
        "images": None if req.ctx.images is None else str(req.ctx.images),
        "max_pixels": req.ctx.max_pixels,
        "drop_bad_images": req.ctx.drop_bad_images,
        "caption_column": req.ctx.caption_column,
        "image_column": req.ctx.image_column,
        "text_field": req.ctx.text_field,
        "skip_bad_files": req.skip_bad_files,
        "split_rows": req.split_rows,
    }


def convert_and_report(req: ConvertRequest) -> dict:
    """`run_conversion`, then print the summary table (the command-line path).

    Args:
        req: the request.

    Returns:
        The manifest.
    """
    manifest = run_conversion(req)
    print(format_summary(manifest), flush=True)
    return manifest
