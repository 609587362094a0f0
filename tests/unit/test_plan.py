"""The dry-run plan of a recipe: levels of parallel stages and what each stage asks for."""

from __future__ import annotations

from pathlib import Path

from dreamray.config import load_recipe
from dreamray.orchestration.cli import main
from dreamray.orchestration.plan import describe_recipe, parallel_levels

REPO = Path(__file__).resolve().parents[2]
REF = REPO / "pipelines" / "recipes" / "dreamllm_7b.yaml"


def test_stage_one_branches_share_a_level():
    recipe = load_recipe(REF, check_paths=False)
    assert parallel_levels(recipe) == [
        ["stage1_comprehension", "stage1_creation"],
        ["merge"],
        ["stage2"],
        ["sft"],
        ["coco_fid", "okvqa", "textvqa"],
    ]


def test_dry_run_prints_batch_triple_and_resources():
    text = describe_recipe(load_recipe(REF, check_paths=False))
    assert "level 0: stage1_comprehension || stage1_creation" in text
    assert "global 2048 = micro 16 x accum 1 x workers 128; 29,296 steps" in text
    assert ("128 workers x {CPU: 8, GPU: 1} + 256 x {CPU: 1} for its data map actors "
            "(2 per worker)") in text
    # one model plan per train stage; without model dirs it says why it has no numbers
    assert text.count("params / memory plan: not available (OSError") == 4


def test_dry_run_prints_the_eval_protocols_of_the_reference_recipe():
    text = describe_recipe(load_recipe(REF, check_paths=False))
    assert ("protocol dreamllm: 30,000 captions x 8 seeds, 150 ddpm steps, CFG 2, 512 px, "
            "best seed by CLIP") in text
    assert "reference: /path/to/fid_stats_mscoco256_val.npz (inception)" in text
    assert "okvqa val, preset okvqa, 5 beams" in text
    assert text.count("8 actors x {CPU: 8, GPU: 1}") == 3


def test_cli_reports_recipe_errors_with_exit_code_2(capsys):
    code = main(["--recipe", str(REF), "--dry-run", "stages.sft.optim.lr=-1.0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "stages.sft.optim.lr" in err
    assert "stages.sft.model.llm_path: path does not exist" not in err  # validation failed first
