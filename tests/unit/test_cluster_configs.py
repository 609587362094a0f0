"""cluster/: the launcher YAML passes Ray's own validation; KubeRay YAMLs keep auth and privacy."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"


def _prepared(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_launcher_yaml_is_valid_for_ray():
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    prepared = _prepared(config)
    assert prepared["available_node_types"]["gpu_8x_a100"]["resources"]["GPU"] == 8
    starts = " ".join(prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2
    assert "--dashboard-host=127.0.0.1" in starts
    # Ray's schema is strict: a misspelled key is rejected, so the check above means something.
    config["available_node_types"]["head"]["min_wrokers"] = 0
    with pytest.raises(Exception, match="min_wrokers"):
        _prepared(config)


def test_kuberay_cluster_has_token_auth_and_no_public_endpoint():
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "dreamray-ray-token"}
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    text = (CLUSTER / "kuberay").joinpath("raycluster.yaml").read_text()
    assert not re.search(r"^\s*[^#\s].*(NodePort|LoadBalancer|kind: Ingress)", text, re.M)


def test_kuberay_job_targets_the_cluster_with_its_token():
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    env = {e["name"]: e for e in job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
           ["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == \
        cluster["spec"]["authOptions"]["secretName"]
    recipe = re.search(r"--recipe (\S+)", job["spec"]["entrypoint"]).group(1)
    assert (REPO / recipe).is_file()


def test_runtime_env_leaves_out_venvs_data_and_runs():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert {".venv/", ".cache/", "runs/", ".git/"} <= set(env["excludes"])
    assert env["env_vars"]["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"


def _gpu_nodes() -> dict[str, tuple[dict[str, float], int]]:
    """Per cluster config: (what one GPU node declares to Ray, most such nodes)."""
    aws = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())["available_node_types"]
    aws_node = aws["gpu_8x_a100"]
    group = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())[
        "spec"]["workerGroupSpecs"][0]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    kuberay_node = {"CPU": float(limits["cpu"]), "GPU": float(limits["nvidia.com/gpu"])}
    return {"aws": (aws_node["resources"], aws_node["max_workers"]),
            "kuberay": (kuberay_node, group["maxReplicas"])}


@pytest.mark.parametrize("cluster", ["aws", "kuberay"])
def test_every_7b_train_stage_fits_the_cluster_with_its_data_actors(cluster):
    from dreamray.config import TrainStageSpec, load_recipe
    from dreamray.orchestration.resources import data_bundles, never_fits, stage_bundles

    node, count = _gpu_nodes()[cluster]
    recipe = load_recipe(REPO / "pipelines" / "recipes" / "dreamllm_7b.yaml", check_paths=False)
    nodes = [{k: float(v) for k, v in node.items()}] * count
    for name, stage in recipe.stages.items():
        if isinstance(stage, TrainStageSpec):
            assert never_fits(stage_bundles(stage), nodes, data_bundles(stage)) is None, name
    # without room for the data actors (the gang's CPUs only) a stage could never start
    stage = recipe.stages["stage2"]
    gang_only = [{"CPU": 8.0 * 8, "GPU": 8.0}] * count
    assert never_fits(stage_bundles(stage), gang_only, data_bundles(stage))
