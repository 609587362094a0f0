"""The entry scripts' error paths (no Ray needed) and the dry run's ledger view."""

from __future__ import annotations

import json
from pathlib import Path

from dreamray.config import load_recipe
from dreamray.config.load import local_paths
from dreamray.orchestration import merge
from dreamray.orchestration.cli import main, stage_main
from dreamray.orchestration.ledger import LEDGER_VERSION

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "pipelines" / "recipes" / "tiny.yaml")


def _fake_tree(root: Path) -> str:
    """Empty dirs at every local path of the tiny recipe, so it loads with path checks."""
    recipe = load_recipe(TINY, {"root": str(root)}, check_paths=False)
    for _, path in local_paths(recipe):
        Path(path).mkdir(parents=True, exist_ok=True)
    return f"root={root}"


def test_unknown_stage_is_a_usage_error(capsys, tmp_path):
    code = stage_main(["--recipe", TINY, "--stage", "stage3", "--run-dir", str(tmp_path)])
    assert code == 2
    assert "unknown stage 'stage3'" in capsys.readouterr().err


def test_incompatible_run_dir_is_refused_before_ray(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"ledger_version": LEDGER_VERSION + 7}))
    code = stage_main(["--recipe", TINY, "--stage", "sft", "--run-dir", str(run),
                       _fake_tree(tmp_path / "assets")])
    err = capsys.readouterr().err
    assert code == 1 and "LedgerVersionError" in err and "new --run-dir" in err


def test_dry_run_shows_identity_ledger_state_and_deepspeed(capsys, tmp_path):
    code = main(["--recipe", TINY, "--run-dir", str(tmp_path), "--dry-run", "--shapes-only"])
    out = capsys.readouterr().out
    assert code == 0
    assert "id: stage2-" in out and "run dir: not run (would run)" in out
    assert '"train_batch_size": 4' in out and "params / memory plan:" in out


def test_merge_file_names_match_the_model_artifact_layout():
    from dreamray.contracts import PLUGIN_FILES

    assert merge.PLUGIN_FILES == PLUGIN_FILES
