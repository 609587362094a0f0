"""COCO generate-and-score in-process: resumable by item, CLIP re-ranking, protocol card, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from coco_fixtures import SEEDS, N, tiny_run, write_artifact, write_captions, write_ref_stats

from dreamray.evals.captions import ManifestError
from dreamray.evals.clip_rerank import build_tiny_clip
from dreamray.evals.coco_gen import SamplerSettings
from dreamray.evals.coco_run import generate_and_score
from dreamray.evals.results import ResultsStore
from dreamray.metrics.fid import FidError


@pytest.fixture(scope="module")
def inputs(tiny_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_gen")
    return {
        "artifact": write_artifact(tiny_zoo, root / "artifact"),
        "captions": write_captions(root / "captions.json"),
        "ref": write_ref_stats(root),
        "clip": build_tiny_clip(root / "clip", tiny_zoo.llm, seed=0),
        "root": root,
    }


@pytest.fixture
def count_prompts(monkeypatch):
    """Counts the prompts that reach `generate_images` (the workers call it through the module)."""
    from dreamray.model import generation

    calls = []
    real = generation.generate_images

    def counting(model, prompts, **kwargs):
        calls.extend(prompts)
        return real(model, prompts, **kwargs)

    monkeypatch.setattr(generation, "generate_images", counting)
    return calls


def _run(inputs, out, **overrides):
    fields = {"captions": inputs["captions"], **overrides}
    run = tiny_run(inputs["artifact"], ref=inputs["ref"], **fields)
    return generate_and_score(run, out)


def _pngs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("images/*/*.png")}


def test_killed_run_resumes_only_missing_items_with_the_same_fid(inputs, tmp_path, count_prompts):
    clip = str(inputs["clip"])
    whole = _run(inputs, tmp_path / "whole", clip_model=clip)
    assert whole["status"] == "complete" and len(count_prompts) == N * len(SEEDS)
    count_prompts.clear()
    part = _run(inputs, tmp_path / "part", clip_model=clip, max_items=3)
    assert part["status"] == "incomplete" and part["missing"] == N * len(SEEDS) - 4
    assert len(ResultsStore(tmp_path / "part" / "generated.jsonl")) == 4  # 2 chunks of 2
    count_prompts.clear()
    resumed = _run(inputs, tmp_path / "part", clip_model=clip)
    assert len(count_prompts) == N * len(SEEDS) - 4 and resumed["generated"] == 4
    assert _pngs(tmp_path / "part") == _pngs(tmp_path / "whole")  # per-item noise seeds
    for key in ("fid", "fid_per_seed", "fid_reranked", "fid_mean_over_seeds"):
        assert resumed[key] == whole[key]
    # A record whose PNG is gone (deleted, or a crash between rename and fsync) is redone.
    victim = next((tmp_path / "part" / "images" / "seed43").glob("*.png"))
    victim.unlink()
    (victim.parent / f".{victim.name}.abc.tmp").write_bytes(b"torn")  # a killed actor's temp
    count_prompts.clear()
    again = _run(inputs, tmp_path / "part", clip_model=clip)
    assert len(count_prompts) == 1 and again["fid"] == whole["fid"]
    assert again["folders"]["seed43"]["skipped"] == []  # the stale temp file was removed


def test_scores_carry_the_protocol_card_and_a_grid(inputs, tmp_path):
    result = _run(inputs, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())
    card = saved["card"]
    assert card["N"] == N and card["seeds"] == list(SEEDS) and card["num_inference_steps"] == 2
    assert card["guidance_scale"] == 2.0 and card["scheduler"] == "ddpm"
    assert card["resolution"] == 16 and card["protocol"] == "dreamllm"
    assert len(card["ref_stats_sha256"]) == 64 and card["model"]["kind"] == "files"
    assert saved["headline"] == "mean_over_seeds" and result["fid_reranked"] is None
    assert saved["folders"]["seed42"]["n"] == N
    assert (tmp_path / "out" / "grid.png").is_file()
    with pytest.raises(ValueError, match="run.json"):  # same out_dir, other sampler
        _run(inputs, tmp_path / "out", sampler=SamplerSettings(num_inference_steps=3))


def test_rerank_picks_the_clip_argmax(inputs, tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    out = tmp_path / "out"
    _run(inputs, out, clip_model=str(inputs["clip"]))
    model = CLIPModel.from_pretrained(inputs["clip"]).eval()
    processor = CLIPImageProcessor.from_pretrained(inputs["clip"])
    tok = AutoTokenizer.from_pretrained(inputs["clip"])
    manifest = json.loads((out / "manifest.json").read_text())
    chosen = ResultsStore(out / "reranked.jsonl").records()
    # the tiny CLIP must not pick one seed everywhere, or argmax and "first seed" would agree
    assert len({r["seed"] for r in chosen.values()}) == len(SEEDS)
    for item in manifest["items"]:
        files = [out / "images" / f"seed{s}" / f"{item['item_id']}.png" for s in SEEDS]
        pixels = processor(
            images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt"
        )
        with torch.no_grad():
            logits = model(
                input_ids=tok([item["caption"]], return_tensors="pt")["input_ids"],
                pixel_values=pixels["pixel_values"],
            ).logits_per_image[:, 0]
        best = int(logits.argmax())
        assert chosen[item["item_id"]]["seed"] == SEEDS[best]
        picked = out / "images" / "reranked" / f"{item['item_id']}.png"
        assert picked.read_bytes() == files[best].read_bytes()


def test_bad_captions_and_too_many_samples_are_named(inputs, tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}]}))
    with pytest.raises(ManifestError, match="no 'annotations' list"):
        _run(inputs, tmp_path / "a", captions=str(tmp_path / "bad.json"))
    bad = {"images": [{"id": 1}], "annotations": []}
    (tmp_path / "bad2.json").write_text(json.dumps(bad))
    with pytest.raises(ManifestError, match=r"images\[0\] has no file_name"):
        _run(inputs, tmp_path / "b", captions=str(tmp_path / "bad2.json"))
    with pytest.raises(ManifestError, match="7 samples asked, only 6"):
        _run(inputs, tmp_path / "c", num_samples=7)
    with pytest.raises(FidError, match="missing.npz"):  # before any image is generated
        _run(inputs, tmp_path / "d", ref_stats=str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        _run(inputs, tmp_path / "d", clip_model=str(tmp_path))
    assert not (tmp_path / "d").exists()
