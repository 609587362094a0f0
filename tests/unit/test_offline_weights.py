"""Missing offline weights are reported by the driver, naming the paths looked at and the flag."""

from __future__ import annotations

import pytest

from dreamray.config import EvalStageSpec
from dreamray.config.eval_specs import CocoFidParams
from dreamray.evals import features
from dreamray.evals.features import FeatureSetupError
from dreamray.evals.offline_weights import (
    RECIPE_SOURCES,
    MissingWeightsError,
    require_clip_model,
    require_coco_fid_weights,
    require_inception_weights,
    require_model_artifact,
)
from dreamray.evals.stage import run_eval_stage

FLAG = "--inception-weights"


@pytest.fixture
def clean_cache(tmp_path, monkeypatch):
    cache = tmp_path / "clean_fid_cache"
    cache.mkdir()
    monkeypatch.setattr(features, "CLEAN_FID_CACHE", cache)
    return cache


@pytest.fixture
def hub_dir(tmp_path):
    import torch

    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


@pytest.mark.parametrize("protocol", ["clean", "legacy_pytorch", "dreamllm"])
def test_a_given_weights_file_must_exist(tmp_path, protocol):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(MissingWeightsError) as err:
        require_inception_weights(protocol, str(missing), extractor="inception", option=FLAG)
    assert str(missing) in str(err.value) and FLAG in str(err.value)
    assert "https://" in str(err.value)  # where to fetch it once
    (tmp_path / "mine.pt").write_bytes(b"weights")
    found = require_inception_weights(
        protocol, str(tmp_path / "mine.pt"), extractor="inception", option=FLAG
    )
    assert found == tmp_path / "mine.pt"


def test_clean_without_a_file_looks_in_clean_fids_cache(clean_cache):
    expected = clean_cache / features.TORCHSCRIPT_NAME
    with pytest.raises(MissingWeightsError) as err:
        require_inception_weights("clean", None, extractor="inception", option=FLAG)
    assert str(expected) in str(err.value) and FLAG in str(err.value)
    expected.write_bytes(b"torchscript")
    assert require_inception_weights("clean", None, extractor="inception", option=FLAG) == expected


@pytest.mark.parametrize("protocol", ["legacy_pytorch", "dreamllm"])
def test_pytorch_fid_protocols_look_in_the_torch_hub_cache(hub_dir, protocol):
    expected = hub_dir / "checkpoints" / features.FID_INCEPTION_NAME
    with pytest.raises(MissingWeightsError, match=str(expected)):
        require_inception_weights(protocol, None, extractor="inception", option="x.weights")
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"state dict")
    assert require_inception_weights(protocol, None, extractor="inception", option="o") == expected


def test_a_tiny_extractor_needs_no_weights_and_protocols_are_checked(tmp_path):
    assert require_inception_weights("clean", None, extractor="tiny:0", option=FLAG) is None
    with pytest.raises(FeatureSetupError):
        require_inception_weights("legacy_tensorflow", None, extractor="inception", option=FLAG)


def test_model_dirs_need_their_config(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        require_clip_model(str(tmp_path / "clip"), "--clip-model")
    assert str(tmp_path / "clip" / "config.json") in str(err.value)
    assert "--clip-model" in str(err.value)
    with pytest.raises(MissingWeightsError, match="eval.model"):
        require_model_artifact(str(tmp_path), "eval.model")
    (tmp_path / "config.json").write_text("{}")
    assert require_model_artifact(str(tmp_path), "eval.model") == tmp_path
    assert require_clip_model(str(tmp_path), "--clip-model") == tmp_path
    assert require_clip_model(None, "--clip-model") is None


def test_coco_fid_checks_the_clip_dir_only_when_it_reranks(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # the model artifact
    one_seed = CocoFidParams(
        captions="c.json",
        ref_stats="r.npz",
        feature_extractor="tiny:0",
        seeds=[1],
        clip_model=str(tmp_path / "no_clip"),
    )
    require_coco_fid_weights(one_seed, str(tmp_path), RECIPE_SOURCES)
    two_seeds = one_seed.model_copy(update={"seeds": [1, 2]})
    with pytest.raises(MissingWeightsError, match="eval.params.clip_model"):
        require_coco_fid_weights(two_seeds, str(tmp_path), RECIPE_SOURCES)


def test_the_eval_stage_fails_on_missing_inception_before_anything_starts(tmp_path, clean_cache):
    import ray

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    params = {
        "captions": "missing.json",
        "ref_stats": "missing.npz",
        "protocol": "clean",
        "seeds": [42],
    }
    spec = EvalStageSpec.model_validate(
        {
            "kind": "eval",
            "scaling": {"num_workers": 2},
            "eval": {"task": "coco_fid", "model": str(tmp_path / "model"), "params": params},
        }
    )
    with pytest.raises(MissingWeightsError) as err:
        run_eval_stage(spec, str(tmp_path / "model"), str(tmp_path / "out"))
    message = str(err.value)
    assert str(clean_cache / features.TORCHSCRIPT_NAME) in message
    assert "eval.params.inception_weights" in message
    # Checked first: before the reference (missing too), the manifest, Ray and any actor.
    assert not (tmp_path / "out" / "manifest.json").exists() and not ray.is_initialized()


def test_online_the_driver_fetches_the_default_file_once(clean_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fetched = []

    def fake_download(protocol):
        fetched.append(protocol.name)
        path = clean_cache / features.TORCHSCRIPT_NAME
        path.write_bytes(b"weights")
        return path

    monkeypatch.setattr(features, "download_inception", fake_download)
    path = require_inception_weights("clean", None, extractor="inception", option=FLAG)
    assert path == clean_cache / features.TORCHSCRIPT_NAME and fetched == ["clean"]
    require_inception_weights("clean", None, extractor="inception", option=FLAG)
    assert fetched == ["clean"]  # on disk now: not fetched again


def test_online_a_failed_fetch_is_the_clear_error(clean_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(protocol):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(features, "download_inception", no_network)
    with pytest.raises(MissingWeightsError) as err:
        require_inception_weights("clean", None, extractor="inception", option=FLAG)
    message = str(err.value)
    assert "name resolution" in message and FLAG in message
    assert str(clean_cache / features.TORCHSCRIPT_NAME) in message
