"""The toy recipe learns: stage-I creation on the shapes world makes the frozen SD head draw the
colours its prompts ask for, and a merge that takes the wrong `dream_embedding.bin` loses it.

Both stage-I branches of pipelines/recipes/toy.yaml run through the DAG runner on the shared
local Ray cluster, on the pretrained world zoo and the world's shards (`make tiny` builds
them; this module builds what is missing). The attribute_match eval then scores, in process:
the base model (untrained queries and projectors), the creation branch, and the branch with its
`dream_embedding.bin` replaced by the comprehension branch's (whose queries never trained): the
file a merge would publish if it picked `dream_embedding` from the wrong stage.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dreamray.config import load_recipe
from dreamray.contracts import PLUGIN_FILES
from dreamray.evals.pool import PoolOptions
from dreamray.evals.stage import run_attribute_match
from dreamray.orchestration.executors import base_model_artifact, default_executors
from dreamray.orchestration.ray_backend import RayBackend
from dreamray.orchestration.runner import DagRunner

REPO = Path(__file__).resolve().parents[2]
WORLD = REPO / ".cache" / "tiny" / "world"
TOY = REPO / "pipelines" / "recipes" / "toy.yaml"
STAGE_ONE = ("stage1_comprehension", "stage1_creation")
# Well above the untrained queries, which draw whatever the UNet's unconditional prior likes.
MIN_GAIN = 0.25

pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="module")
def world_assets() -> Path:
    """The world's shards, eval sets and pretrained zoo under .cache/tiny/world."""
    for module, out in (("dreamray.data.world", "data"), ("dreamray.evals.world_sets", "evals"),
                        ("dreamray.world_zoo", "zoo")):
        subprocess.run([sys.executable, "-m", module, "--out", str(WORLD / out)], cwd=REPO,
                       check=True, timeout=1800)
    return WORLD


def _colour(recipe, model_dir: Path, out: Path) -> dict:
    params = recipe.stages["base_attributes"].eval.params
    return run_attribute_match(params, str(model_dir), out, PoolOptions(num_actors=0))


def test_creation_learns_colour_and_a_wrong_merge_falls_back(world_assets, ray_cluster,
                                                            tmp_path):
    recipe = load_recipe(TOY, {"root": str(REPO), "stage_defaults.scaling.cpus_per_worker": 1.0})
    summary = DagRunner(recipe, str(tmp_path / "run"), RayBackend(recipe.name),
                        default_executors(), targets=list(STAGE_ONE), poll_s=0.5).run()
    assert all(summary.states[n] == "done" for n in STAGE_ONE)
    base = base_model_artifact(recipe.stages["base_attributes"], tmp_path / "base_model")
    creation = Path(summary.artifact("stage1_creation"))
    wrong = tmp_path / "wrong_merge"
    shutil.copytree(creation, wrong)
    name = PLUGIN_FILES["dream_embedding"]
    shutil.copy(Path(summary.artifact("stage1_comprehension")) / name, wrong / name)

    scores = {label: _colour(recipe, d, tmp_path / f"eval_{label}")
              for label, d in (("base", base), ("creation", creation), ("wrong", wrong))}
    colour = {label: s["color_accuracy"] for label, s in scores.items()}
    chance = scores["base"]["color_chance"]
    print(f"colour accuracy {colour}, chance {chance:.2f}")
    assert colour["creation"] >= colour["base"] + MIN_GAIN, colour
    assert colour["wrong"] <= colour["base"] + (colour["creation"] - colour["base"]) / 3, colour
