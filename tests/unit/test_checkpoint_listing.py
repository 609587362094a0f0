"""`checkpoint_problems`: what makes a merged checkpoint unusable, judged from its file listing."""

from __future__ import annotations

import json
from pathlib import Path

from dreamray.train.checkpoint import local_checkpoint_problems, write_listing


def _checkpoint(root: Path, world_size: int = 2) -> Path:
    """A merged two-rank checkpoint: each rank's files, then each rank's listing."""
    for rank in range(world_size):
        rank_root = root / f"rank_local_{rank}"
        (rank_root / "ds" / "step_00000002").mkdir(parents=True)
        (rank_root / "ds" / "step_00000002" / f"shard_{rank}.pt").write_bytes(b"x" * (100 + rank))
        (rank_root / "ranks" / f"rank_{rank}").mkdir(parents=True)
        (rank_root / "ranks" / f"rank_{rank}" / "train_state.json").write_text("{}")
        if rank == 0:
            (rank_root / "meta.json").write_text(json.dumps({"world_size": world_size}))
        write_listing(rank_root, rank)
    merged = root / "merged"
    for rank in range(world_size):
        for path in (root / f"rank_local_{rank}").rglob("*"):
            if path.is_file():
                target = merged / path.relative_to(root / f"rank_local_{rank}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
    return merged


def test_a_complete_checkpoint_has_no_problems(tmp_path):
    assert local_checkpoint_problems(_checkpoint(tmp_path)) == []


def test_a_truncated_shard_is_named_with_both_sizes(tmp_path):
    ckpt = _checkpoint(tmp_path)
    (ckpt / "ds/step_00000002/shard_1.pt").write_bytes(b"x" * 7)
    assert local_checkpoint_problems(ckpt) == [
        "ds/step_00000002/shard_1.pt is 7 bytes, 101 were written"]


def test_a_missing_rank_listing_or_file_is_named(tmp_path):
    ckpt = _checkpoint(tmp_path)
    (ckpt / "ranks/rank_1/files.json").unlink()
    (ckpt / "ranks/rank_0/train_state.json").unlink()
    assert local_checkpoint_problems(ckpt) == [
        "ranks/rank_0/train_state.json missing", "ranks/rank_1/files.json missing"]


def test_meta_missing_or_unreadable(tmp_path):
    ckpt = _checkpoint(tmp_path)
    (ckpt / "meta.json").write_text('{"world_si')
    assert local_checkpoint_problems(ckpt)[0].startswith("meta.json unreadable")
    (ckpt / "meta.json").unlink()
    assert local_checkpoint_problems(ckpt) == ["meta.json missing"]
