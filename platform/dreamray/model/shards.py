"""An LLM's weight files in Hugging Face's layout, read and written with checked, named errors.

Written: ``model.safetensors``, or above ``max_shard_size`` ``model-0000N-of-0000M.safetensors``
plus ``model.safetensors.index.json`` (``{"metadata": {"total_size"}, "weight_map": {key:
file}}``), split as ``huggingface_hub`` splits for ``save_pretrained``. Read: those, the
``pytorch_model*.bin`` equivalents, or one full ``pytorch_model.bin``; shard by shard into a
module, so a 7B model is never held twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from dreamray.model.artifact import ArtifactError, format_keys

SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
DEFAULT_MAX_SHARD_SIZE = "10GB"  # transformers 4.35's save_pretrained default (the reference's)
_SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<k>\d{5})-of-(?P<m>\d{5})\.(?P<ext>safetensors|bin)$")


def write_sharded(
    state: dict[str, torch.Tensor], out_dir: Path, max_shard_size: int | str
) -> list[str]:
    """Write a state dict as safetensors, sharded above `max_shard_size`.

    Args:
        state: the tensors (no two may share storage).
        out_dir: an existing dir.
        max_shard_size: bytes per shard at most (an int, or e.g. ``"10GB"``).

    Returns:
        The weight files written (the index not included).
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    for filename, keys in split.filename_to_tensors.items():
        shard = {k: state[k].detach().cpu().contiguous() for k in keys}
        save_file(shard, out_dir / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return sorted(split.filename_to_tensors)


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_series(index_path: Path, files: set[str]) -> None:
    """Every shard of a ``-0000k-of-0000M`` series must be on disk."""
    for name in sorted(files):
        match = _SHARD_NAME.match(name)
        if match is None:
            continue
        total = int(match["m"])
        for k in range(1, total + 1):
            shard = f"{match['stem']}-{k:05d}-of-{total:05d}.{match['ext']}"
            if not (index_path.parent / shard).is_file():
                raise ArtifactError(
                    f"{index_path.parent}: missing shard {shard} (of the {total} that "
                    f"{index_path.name} spreads the weights over)"
                )


def _read_index(index_path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ArtifactError(f"{index_path}: not a weight index ({err!r})") from err
    files = set(weight_map.values())
    _check_series(index_path, files)
    absent = sorted(f for f in files if not (index_path.parent / f).is_file())
    if absent:
        keys = [k for k, f in weight_map.items() if f == absent[0]]
        raise ArtifactError(f"{index_path} names {absent}, not in {index_path.parent} "
                            f"(e.g. for keys {format_keys(keys)})")
    return weight_map


def _indexed(index_path: Path) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    weight_map = _read_index(index_path)
    for name in sorted(set(weight_map.values())):
        state = _read_file(index_path.parent / name)
        lacking = [k for k, f in weight_map.items() if f == name and k not in state]
        if lacking:
            raise ArtifactError(f"{index_path} puts keys {format_keys(lacking)} in {name}, "
                                "which does not hold them")
        yield index_path.parent / name, state


def weight_files(path: Path) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """The LLM weight files of a dir, read one at a time.

    Args:
        path: the dir.

    Yields:
        ``(file, state dict)`` per file.

    Raises:
        ArtifactError: on shards without an index, a missing shard, an index naming a file that
            is not there or a key its file lacks, or no weights at all.
    """
    for index, single in ((SAFE_INDEX, SAFE_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        if (path / index).is_file():
            yield from _indexed(path / index)
            return
        if (path / single).is_file():
            yield path / single, _read_file(path / single)
            return
    strays = sorted(p.name for p in path.iterdir() if _SHARD_NAME.match(p.name))
    if strays:
        raise ArtifactError(f"{path}: shards {strays} but no {SAFE_INDEX} / {BIN_INDEX}")
    raise ArtifactError(f"{path}: no LLM weights ({SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE})")


def expected_keys(module: nn.Module) -> dict[str, torch.Size]:
    """The module's state-dict keys and shapes, one key per storage (tied weights load once)."""
    seen: set[int] = set()
    out = {}
    for key, tensor in module.state_dict(keep_vars=True).items():
        if tensor.data_ptr() in seen and tensor.numel():
            continue
        seen.add(tensor.data_ptr())
        out[key] = tensor.shape
    return out


def load_weights(
    module: nn.Module, path: Path, skip: Callable[[str], bool]
) -> None:
    """Fill a module from a dir's weight files, strictly, naming the file of every problem.

    Args:
        module: e.g. a freshly built causal LM.
        path: the dir (see `weight_files`).
        skip: keys of the files that belong to something else (plugins, stale buffers).

    Raises:
        ArtifactError: as `weight_files`; on unexpected or mis-shaped keys (naming the file) or
            keys no file holds (naming the dir).
    """
    expected, loaded = expected_keys(module), set()
    for file, state in weight_files(path):
        state = {k: v for k, v in state.items() if not skip(k)}
        unexpected = [k for k in state if k not in expected]
        mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k])}"
                      for k, v in state.items() if k in expected and v.shape != expected[k]]
        if unexpected or mismatched:
            raise ArtifactError(f"{file}: unexpected keys {format_keys(unexpected)}, "
                                f"shape mismatches {format_keys(mismatched)}")
        module.load_state_dict(state, strict=False)
        loaded |= set(state)
    missing = [k for k in expected if k not in loaded]
    if missing:
        raise ArtifactError(f"{path}: the LLM's weight files lack keys {format_keys(missing)}")
