"""A train stage's publish that runs out of space (ENOSPC) midway: nothing half-published, the
error names what was being written, and a second publish succeeds. No Ray: `_publish` is given a
checkpoint directory laid out as the train worker writes it."""

from __future__ import annotations

import errno
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from dreamray.config import load_recipe
from dreamray.orchestration import launcher
from dreamray.train.run import ARTIFACT_SUBDIR, METRICS_FILE, RunInfo
from dreamray.train.state import TrainState

REPO = Path(__file__).resolve().parents[2]


class _Checkpoint:
    """The part of `ray.train.Checkpoint` that `_publish` uses."""

    def __init__(self, path: Path):
        self.path = str(path)

    @contextmanager
    def as_directory(self):
        yield Path(self.path)


def _final_checkpoint(root: Path) -> _Checkpoint:
    (root / ARTIFACT_SUBDIR).mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "dream_embedding.bin"):
        (root / ARTIFACT_SUBDIR / name).write_bytes(name.encode() * 100)
    (root / "ranks" / "rank_0").mkdir(parents=True)
    (root / "ranks" / "rank_0" / "train_state.json").write_text(TrainState(step=4).to_json())
    (root / METRICS_FILE).write_text(json.dumps({"loss": 1.5}))
    return _Checkpoint(root)


def _copy_one_file_then_fail(src, dst, **_kwargs):
    first = sorted(Path(src).iterdir())[0]
    Path(dst).mkdir(parents=True, exist_ok=True)
    shutil.copy2(first, Path(dst) / first.name)
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_train_publish_out_of_space_leaves_nothing_and_names_the_artifact(tmp_path,
                                                                            monkeypatch):
    recipe = load_recipe(REPO / "pipelines/recipes/tiny.yaml", {"root": "/x"},
                         check_paths=False)
    stage, checkpoint = recipe.stages["stage2"], _final_checkpoint(tmp_path / "ckpt")
    run = RunInfo(name="stage2", run_name="stage2-abc", run_dir=None, spec_hash="abc")
    target = tmp_path / "artifacts" / "stage2-abc"
    target.parent.mkdir()
    monkeypatch.setattr(launcher.shutil, "copytree", _copy_one_file_then_fail)
    with pytest.raises(OSError, match="No space left") as err:
        launcher._publish(stage, "stage2", run, checkpoint, str(target), {}, 0.0)
    assert any(str(target) in note and "nothing was published" in note
               for note in err.value.__notes__)
    assert list(target.parent.iterdir()) == []  # no artifact, no staging dir
    monkeypatch.undo()
    outcome = launcher._publish(stage, "stage2", run, checkpoint, str(target), {}, 0.0)
    assert outcome.steps == 4 and "# dreamray stage `stage2`" in (target / "README.md").read_text()
    assert sorted(p.name for p in target.iterdir()) == [
        "README.md", "config.json", "dream_embedding.bin", "model.safetensors", "stage.json"]
