"""The stage-I merge (file pick + validation) and the gang arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from stage_toys import write_plugin_artifact

from dreamray.config import MergeStageSpec
from dreamray.contracts import TRAIN_KIND
from dreamray.orchestration.context import StageContext
from dreamray.orchestration.manifest import (
    ManifestRecord,
    build_manifest,
    hash_files,
    manifest_files,
    write_manifest,
)
from dreamray.orchestration.merge import MergeError, run_merge_stage
from dreamray.orchestration.resources import fits_now, never_fits, pack

MERGE = MergeStageSpec(needs=["comp", "crea"], merge={
    "clip_vision_embedding": "stage:comp",
    "dream_embedding": "stage:crea",
    "stable_diffusion_head": "stage:crea",
})


def _source(root: Path, name: str, seed: int) -> Path:
    directory = root / name
    write_plugin_artifact(directory, seed)
    record = ManifestRecord(stage=name, kind=TRAIN_KIND)
    write_manifest(directory, build_manifest(directory, record))
    return directory


def _ctx(tmp_path: Path, comp: Path, crea: Path) -> StageContext:
    return StageContext(name="merge", identity="9" * 64, spec_hash="8" * 64,
                        artifact_dir=str(tmp_path / "out" / "merge"), train_storage="",
                        train_run_name="", inputs={"comp": str(comp), "crea": str(crea)})


def test_merge_picks_files_from_each_branch(tmp_path):
    comp, crea = _source(tmp_path, "comp", 1), _source(tmp_path, "crea", 2)
    outcome = run_merge_stage(MERGE, _ctx(tmp_path, comp, crea))
    out = Path(outcome.artifact_dir)
    files = hash_files(out)
    assert files["clip_vision_embedding.bin"] == hash_files(comp)["clip_vision_embedding.bin"]
    assert files["dream_embedding.bin"] == hash_files(crea)["dream_embedding.bin"]
    assert files["stable_diffusion_head.bin"] == hash_files(crea)["stable_diffusion_head.bin"]
    assert {"config.json", "tokenizer.json"} <= set(files)
    assert "model.safetensors" not in files
    manifest = json.loads((out / "stage.json").read_text())
    assert manifest_files(manifest) == files and manifest["kind"] == "merge"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp")]


def test_merge_refuses_a_corrupted_source(tmp_path):
    comp, crea = _source(tmp_path, "comp", 1), _source(tmp_path, "crea", 2)
    bad = crea / "dream_embedding.bin"
    data = bad.read_bytes()
    bad.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(MergeError, match="dream_embedding.bin: sha256 .* corrupted"):
        run_merge_stage(MERGE, _ctx(tmp_path, comp, crea))
    assert not (tmp_path / "out" / "merge").exists()


def test_merge_checks_keys_and_widths(tmp_path):
    comp, crea = _source(tmp_path, "comp", 1), tmp_path / "crea"
    write_plugin_artifact(crea, 2)
    torch.save({"dream_queries": torch.zeros(1, 2, 5)}, crea / "dream_embedding.bin")
    head = torch.load(crea / "stable_diffusion_head.bin", weights_only=True)
    del head["unet.conv_in.weight"]
    torch.save(head, crea / "stable_diffusion_head.bin")
    write_manifest(crea, build_manifest(crea, ManifestRecord(stage="crea", kind=TRAIN_KIND)))
    with pytest.raises(MergeError, match="no key starting with 'unet.'"):
        run_merge_stage(MERGE, _ctx(tmp_path, comp, crea))
    head["unet.conv_in.weight"] = torch.zeros(1)
    torch.save(head, crea / "stable_diffusion_head.bin")
    write_manifest(crea, build_manifest(crea, ManifestRecord(stage="crea", kind=TRAIN_KIND)))
    with pytest.raises(MergeError, match="projector outputs 8, the dream queries are 5 wide"):
        run_merge_stage(MERGE, _ctx(tmp_path, comp, crea))


def test_gang_never_fits_names_ask_and_cluster():
    gang = [{"CPU": 2.0, "GPU": 1.0}] * 3
    why = never_fits(gang, [{"CPU": 8.0, "GPU": 2.0}])
    assert why and "3 x {CPU: 2, GPU: 1} = {CPU: 6, GPU: 3}" in why
    assert "the cluster has {CPU: 8, GPU: 2} on 1 node(s)" in why
    assert never_fits(gang, [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 2.0, "GPU": 1.0}]) is None
    # Enough in total, but no node holds one bundle: never.
    assert never_fits([{"CPU": 3.0}], [{"CPU": 2.0}, {"CPU": 2.0}])
    assert pack([{"CPU": 1.0}] * 4, [{"CPU": 2.0}, {"CPU": 2.0}])
    # The data actors' CPUs may sit on any node, but they must exist besides the gang.
    assert never_fits([{"CPU": 1.0, "GPU": 1.0}], [{"CPU": 1.0, "GPU": 1.0}], [{"CPU": 1.0}])
    assert never_fits([{"CPU": 1.0, "GPU": 1.0}],
                      [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0}], [{"CPU": 1.0}]) is None
    why = never_fits([{"CPU": 1.0, "GPU": 1.0}], [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 1.0}],
                     [{"CPU": 1.0}] * 3)
    assert why and "plus {CPU: 3} for its 3 data map actor(s)" in why
    assert never_fits([{"CPU": 1.0, "GPU": 1.0}], [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0}],
                      [{"CPU": 1.0}] * 3) is None


def test_fits_now_counts_own_gangs_before_they_are_granted():
    cluster = {"CPU": 4.0}
    # Our first gang (3 CPUs) was submitted but Ray has not granted it yet: available is 4.
    assert not fits_now({"CPU": 2.0}, cluster, {"CPU": 3.0}, {"CPU": 4.0})
    assert fits_now({"CPU": 1.0}, cluster, {"CPU": 3.0}, {"CPU": 4.0})
    # Another job holds 3 CPUs: wait even though our own reservations leave room.
    assert not fits_now({"CPU": 2.0}, cluster, {}, {"CPU": 1.0})
