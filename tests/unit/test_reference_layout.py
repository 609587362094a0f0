"""The reference's checkpoint layout: a dir written as RunpeiDong/DreamLLM writes it loads with
the release's token ids, saves back with the same keys and config fields, and each kind of bad
dir is refused naming its file, key or field. Our own layout shards large LLMs too."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from model_fixtures import make_batch, tiny_spec
from reference_fixtures import RELEASE_ORDER, write_reference_checkpoint
from safetensors.torch import load_file

from dreamray.model.artifact import ArtifactError
from dreamray.model.dreamllm import DreamLLM
from dreamray.model.reference_config import TowerPaths

PLUGINS = ("clip_vision_embedding", "dream_embedding", "stable_diffusion_head")


@pytest.fixture(scope="module")
def written(tiny_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "ckpt"
    return out, write_reference_checkpoint(out, tiny_zoo)


@pytest.fixture(scope="module")
def loaded(written):
    return DreamLLM.from_pretrained(written[0])


def _shard_keys(path) -> dict[str, torch.Tensor]:
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    out = {}
    for name in sorted(set(index.values())):
        out.update(load_file(path / name))
    assert sorted(out) == sorted(index)
    return out


def _copy(written, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(written[0], broken)
    return broken


def test_loads_with_the_release_token_ids_and_weights(written, loaded):
    path, truth = written
    ids = loaded.token_ids
    # the release's order, not ours: [PAD] 400, <im_start> 401, <dream_end> 402, ...
    assert ids.pad == 400 and ids.im_start == 401 and ids.dream_end == 402
    assert [loaded.tokenizer.convert_tokens_to_ids(t) for t in RELEASE_ORDER] == list(
        range(401, 408))
    assert (ids.dream_start, ids.im_patch, ids.image, ids.dream) == (403, 404, 406, 407)
    state = loaded.llm.state_dict()
    for key, tensor in truth["llm"].items():
        if not key.endswith("rotary_emb.inv_freq"):
            assert torch.equal(state[key], tensor), key
    vision = loaded.clip_vision_embedding.state_dict()
    assert torch.equal(vision["projector.projector.bias"],
                       truth["clip_vision_embedding"]["projector.projector.bias"])
    assert torch.equal(loaded.dream_embedding.dream_queries,
                       truth["dream_embedding"]["dream_queries"])
    assert loaded.num_queries == 8 and loaded.dreamllm_config.vision_select_layer == -2
    assert len(list(path.glob("model-*-of-00003.safetensors"))) == 3


def test_forward_runs_on_the_loaded_checkpoint(loaded):
    batch = make_batch(loaded, "mixed")
    assert int((batch["input_ids"] == 403).sum()) == 1  # the DRM block uses the release's id
    out = loaded(**batch, lm_weight=1.0, vm_weight=10.0)
    assert torch.isfinite(out.loss) and out.num_dreams == 1 and out.num_images == 2


def test_saves_back_with_the_reference_keys_and_config_fields(written, loaded, tiny_zoo,
                                                              tmp_path):
    path, truth = written
    out = loaded.save_pretrained(
        tmp_path / "again", layout="reference", max_shard_size=200_000,
        towers=TowerPaths(str(tiny_zoo.vision), str(tiny_zoo.diffusion)),
    )
    config, again = truth["config"], json.loads((out / "config.json").read_text())
    assert sorted(again) == sorted(config)
    differ = {k for k in config if config[k] != again[k]}
    assert differ == {"transformers_version"}, differ
    ours, theirs = _shard_keys(out), _shard_keys(path)
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    for name in PLUGINS:
        mine = torch.load(out / f"{name}.bin", weights_only=True)
        assert sorted(mine) == sorted(truth[name]), name
        assert all(torch.equal(mine[k], v) for k, v in truth[name].items()), name
    reloaded = DreamLLM.from_pretrained(out)
    assert reloaded.token_ids == loaded.token_ids


def test_reference_layout_needs_the_tower_dirs(loaded, tmp_path):
    with pytest.raises(ValueError, match="towers="):
        loaded.save_pretrained(tmp_path / "x", layout="reference")


def test_our_layout_shards_a_large_llm(loaded, tmp_path):
    out = loaded.save_pretrained(tmp_path / "ours", max_shard_size=200_000)
    assert (out / "model.safetensors.index.json").is_file()
    assert not (out / "model.safetensors").exists()
    again = DreamLLM.from_pretrained(out)
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(again.state_dict()[key], tensor), key


def test_missing_shard_is_named(written, tmp_path):
    broken = _copy(written, tmp_path)
    (broken / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"missing shard model-00002-of-00003\.safetensors"):
        DreamLLM.from_pretrained(broken)


def test_index_naming_an_absent_file_is_named(written, tmp_path):
    broken = _copy(written, tmp_path)
    index_path = broken / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.norm.weight"] = "extra.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ArtifactError, match=r"names \['extra.safetensors'\].*model.norm.weight"):
        DreamLLM.from_pretrained(broken)


def test_shards_without_index_are_refused(written, tmp_path):
    broken = _copy(written, tmp_path)
    (broken / "model.safetensors.index.json").unlink()
    with pytest.raises(ArtifactError, match="no model.safetensors.index.json"):
        DreamLLM.from_pretrained(broken)


def test_plugin_shapes_that_do_not_fit_the_config_are_named(written, tmp_path):
    broken = _copy(written, tmp_path)
    torch.save({"dream_queries": torch.zeros(1, 5, 64)}, broken / "dream_embedding.bin")
    with pytest.raises(ArtifactError, match=r"dream_embedding.bin.*dream_queries: file "
                                            r"\(1, 5, 64\) vs model \(1, 8, 64\)"):
        DreamLLM.from_pretrained(broken)


def test_plugin_keys_that_do_not_fit_are_named(written, tmp_path):
    broken = _copy(written, tmp_path)
    state = torch.load(broken / "clip_vision_embedding.bin", weights_only=True)
    del state["projector.projector.bias"]
    torch.save(state, broken / "clip_vision_embedding.bin")
    with pytest.raises(ArtifactError, match=r"clip_vision_embedding.bin: missing keys "
                                            r"\[projector.projector.bias\]"):
        DreamLLM.from_pretrained(broken)


def test_config_fields_that_do_not_fit_are_named(written, tmp_path):
    broken = _copy(written, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    config["plugins_init_kwargs"]["dream_embedding"]["embed_hidden_size"] = 32
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="dream_embedding.embed_hidden_size = 32"):
        DreamLLM.from_pretrained(broken)
    config["plugins_init_kwargs"]["dream_embedding"]["embed_hidden_size"] = 64
    config["special_tokens2ids_dict"]["additional_special_tokens"]["<dream_start>"] = 407
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=r"<dream_start>: config 407 vs tokenizer 403"):
        DreamLLM.from_pretrained(broken)


def test_tokenizer_without_dreamllm_tokens_is_refused(written, tmp_path):
    broken = _copy(written, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / name).unlink()  # left: the bare LLaMA tokenizer.model
    with pytest.raises(ArtifactError, match=r"tokenizer files lack DreamLLM's tokens.*<image>"):
        DreamLLM.from_pretrained(broken)


def test_remote_tower_paths_need_a_spec(written, tiny_zoo, tmp_path):
    broken = _copy(written, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    vision = config["plugins_init_kwargs"]["clip_vision_embedding"]
    vision["clip_vision_model_name_or_path"] = "openai/clip-vit-large-patch14"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="clip_vision_model_name_or_path.*pass spec"):
        DreamLLM.from_pretrained(broken)
    model = DreamLLM.from_pretrained(broken, spec=tiny_spec(tiny_zoo))
    assert model.num_patches == 16
