"""The loop's own resumable state (besides DeepSpeed's shards): counters, data cursor, RNG.

`TrainState` is what a checkpoint needs to continue exactly where it stopped: optimizer steps
taken, samples consumed (by this rank and by the whole gang), NaN accounting, data skip
counts. RNG state is captured per rank (torch CPU + CUDA, Python, NumPy) so that the step after a
resume draws the same diffusion noise and timesteps as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import pickle  # for its error type only: nothing is unpickled
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "train_state.json"
RNG_FILE = "rng_state.pt"


@dataclass
class TrainState:
    """Counters of one rank; every rank holds the same `step` and `samples_global`."""

    step: int = 0
    samples_rank: int = 0
    samples_global: int = 0
    nan_steps: int = 0
    consecutive_nan: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise (sorted keys, for stable files)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        """Inverse of `to_json`.

        Raises:
            ValueError: on missing or unknown keys.
        """
        data = json.loads(text)
        names = set(cls.__dataclass_fields__)
        if set(data) != names:
            raise ValueError(f"train state keys {sorted(data)} != {sorted(names)}")
        return cls(**data)

    def add_skipped(self, counts: dict[str, int]) -> None:
        """Add per-reason data skip counts."""
        for reason, n in counts.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + int(n)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), Python and NumPy; the caller passes `stage.seed + rank`."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The RNG state of this process (torch, CUDA if present, Python, NumPy)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # a tensor, not a numpy array: the file then loads with `weights_only=True`
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what `capture_rng` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_rank_state(directory: Path, state: TrainState, extra: dict[str, Any]) -> None:
    """Write one rank's loop state and RNG into its checkpoint directory.

    Args:
        directory: the rank's checkpoint directory (file names carry no rank: Ray merges rank
            directories, so the caller puts each rank under its own sub-directory).
        state: the counters.
        extra: state saved with the RNG (e.g. the scheduler's state_dict): tensors and plain
            Python values only, so that the file loads with `weights_only=True`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STATE_FILE).write_text(state.to_json())
    torch.save({"rng": capture_rng(), **extra}, directory / RNG_FILE)


def read_rank_state(directory: Path) -> tuple[TrainState, dict[str, Any]]:
    """Inverse of `write_rank_state` (RNG is returned, not applied).

    Returns:
        ``(state, extra)`` where extra holds ``rng`` and whatever else was saved.

    Raises:
        FileNotFoundError: if the directory holds no loop state.
        ValueError: an RNG file that only a pickle load would read.
    """
    state = TrainState.from_json((directory / STATE_FILE).read_text())
    try:
        extra = torch.load(directory / RNG_FILE, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{directory / RNG_FILE}: not loadable with weights_only=True (written by a dreamray "
            "that saved NumPy arrays there); resume from a newer checkpoint or start a new run"
        ) from err
    return state, extra
