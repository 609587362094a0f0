"""FID feature protocols, extractors and folder scoring, in-process (no Ray: num_actors=0)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamray.evals import tiny_feature_extractor
from dreamray.evals.features import (
    FeatureSetupError,
    build_extractor,
    get_protocol,
    image_dataset,
)
from dreamray.evals.fid_eval import FidSettings, score_folders, write_reference_stats
from dreamray.evals.pool import PoolOptions
from dreamray.evals.synthetic_images import write_varied_images
from dreamray.metrics.fid import FidError, StatsDimensionError, save_stats

REPO = Path(__file__).resolve().parents[2]


def _cli():
    spec = importlib.util.spec_from_file_location("coco_fid_cli", REPO / "evals" / "coco_fid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _settings(protocol: str = "clean", **kw) -> FidSettings:
    return FidSettings(
        protocol=protocol, extractor="tiny:0", pool=PoolOptions(num_actors=0), progress=False, **kw
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_unit")
    write_varied_images(root / "a", 24, seed=10)
    write_varied_images(root / "b", 24, seed=11, tint=(0.2, 0.0, -0.1))
    return root


def test_tiny_extractor_is_deterministic_and_batch_invariant():
    x = torch.rand(5, 3, 299, 299) * 255
    a = tiny_feature_extractor(3)(x)
    b = torch.cat([tiny_feature_extractor(3)(x[i : i + 2]) for i in range(0, 5, 2)])
    assert a.shape == (5, 64) and torch.equal(a, b)
    assert not torch.equal(a, tiny_feature_extractor(4)(x))


def test_dreamllm_protocol_matches_the_reference_preprocessing(folders):
    # The reference (pytorch-fid 0.3.0, --resolution 256): Resize(256, bilinear) + CenterCrop
    # + ToTensor, then the network's own bilinear resize to 299 on [0, 1] inputs.
    import torchvision.transforms as tv
    from PIL import Image

    files = sorted(str(p) for p in (folders / "a").iterdir())[:8]
    ours = image_dataset(files, get_protocol("dreamllm"))
    reference = tv.Compose(
        [
            tv.Resize(256, interpolation=tv.InterpolationMode.BILINEAR),
            tv.CenterCrop(256),
            tv.ToTensor(),
        ]
    )
    for i, path in enumerate(files):
        x = reference(Image.open(path).convert("RGB"))[None]
        x = torch.nn.functional.interpolate(
            x, size=(299, 299), mode="bilinear", align_corners=False
        )
        assert torch.allclose(ours[i], x[0] * 255, atol=2e-4), path


def test_unreadable_and_non_image_files_are_skipped_and_listed(folders, tmp_path):
    mixed = tmp_path / "mixed"
    write_varied_images(mixed, 4, seed=3)
    (mixed / "notes.txt").write_text("not an image")
    (mixed / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = score_folders(mixed, _settings(), ref_images=folders / "b")
    reasons = {Path(s["path"]).name: s["reason"] for s in result["skipped"]}
    assert result["n"] == 4
    assert reasons["notes.txt"].startswith("not an image")
    assert reasons["broken.png"].startswith("unreadable")


def test_too_few_images_is_a_clear_error(folders, tmp_path):
    write_varied_images(tmp_path / "one", 1, seed=5)
    (tmp_path / "one" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(FidError, match="at least 2 readable images, found 1"):
        score_folders(tmp_path / "one", _settings(), ref_images=folders / "b")


def test_reference_stats_of_another_dimension(folders, tmp_path):
    save_stats(tmp_path / "inception.npz", np.zeros(2048), np.eye(2048))
    with pytest.raises(
        StatsDimensionError, match="dimension 2048 but the feature extractor gives 64"
    ):
        score_folders(folders / "a", _settings(), ref_stats=tmp_path / "inception.npz")
    argv = [
        "score",
        "--images",
        str(folders / "a"),
        "--ref-stats",
        str(tmp_path / "inception.npz"),
        "--protocol",
        "clean",
        "--feature-extractor",
        "tiny:0",
        "--num-actors",
        "0",
    ]
    assert _cli().main(argv + ["--no-progress"]) == 2


def test_ref_stats_cli_caches_by_content_and_scores_against_it(folders, tmp_path, capsys):
    cli = _cli()
    args = [
        "ref-stats",
        "--images",
        str(folders / "b"),
        "--protocol",
        "legacy_pytorch",
        "--feature-extractor",
        "tiny:0",
        "--num-actors",
        "0",
        "--no-progress",
        "--out",
        str(tmp_path / "ref.npz"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert cli.main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert cli.main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["cached"] is False and second["cached"] is True
    assert first["content_hash"] == second["content_hash"] and first["n"] == 24
    by_stats = score_folders(
        folders / "a", _settings("legacy_pytorch"), ref_stats=tmp_path / "ref.npz"
    )
    by_images = score_folders(folders / "a", _settings("legacy_pytorch"), ref_images=folders / "b")
    assert by_stats["fid"] == pytest.approx(by_images["fid"], rel=1e-12)
    assert by_stats["card"]["reference"]["content_hash"] == first["content_hash"]
    # Another protocol is another key: no stale reuse.
    other = write_reference_stats(
        folders / "b", _settings("clean"), tmp_path / "ref.npz", tmp_path / "cache"
    )
    assert other["cached"] is False and other["content_hash"] != first["content_hash"]


def test_protocol_card_and_unknown_names(folders):
    card = score_folders(folders / "a", _settings("dreamllm"), ref_images=folders / "b")["card"]
    assert card["protocol"] == "dreamllm" and card["clean_fid_mode"] == "legacy_pytorch"
    assert "center crop 256" in card["pre_transform"]
    assert card["feature_extractor"] == {"name": "tiny:0", "dim": 64, "sha256": None}
    with pytest.raises(FeatureSetupError):
        get_protocol("legacy_tensorflow")
    with pytest.raises(FeatureSetupError):
        build_extractor("vgg", get_protocol("clean"))


def test_torchscript_inception_loads_from_a_local_file(tmp_path):
    class FakeLayers(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]

    class FakeInception(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = FakeLayers()

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return self.layers(x)

    path = tmp_path / "my_inception.pt"  # any name: the loader links it under clean-fid's
    torch.jit.script(FakeInception()).save(str(path))
    extractor = build_extractor("inception", get_protocol("clean"), str(path))
    out = extractor.fn(torch.full((2, 3, 299, 299), 192.0))
    assert out.shape == (2, 2048) and torch.allclose(out, torch.full((2, 2048), 0.5))
    assert extractor.sha256 is not None and extractor.dim == 2048
    (tmp_path / "bad.pt").write_bytes(b"not a TorchScript archive")
    with pytest.raises(FeatureSetupError, match="TorchScript"):
        build_extractor("inception", get_protocol("clean"), str(tmp_path / "bad.pt"))
    with pytest.raises(FeatureSetupError, match="no such file"):
        build_extractor("inception", get_protocol("clean"), str(tmp_path / "missing.pt"))


def test_fid_inception_state_dict_loads_from_a_local_file(tmp_path, monkeypatch):
    import cleanfid.inception_pytorch as ip
    import torchvision

    captured = {}
    # Build pytorch-fid's FID Inception with random weights: let its loader hand us the module.
    with monkeypatch.context() as m:
        m.setattr(ip, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(
            torchvision.models.inception.Inception3,
            "load_state_dict",
            lambda self, sd, *a, **k: captured.setdefault("net", self),
        )
        ip.InceptionV3(output_blocks=[3], resize_input=False)
    torch.save(captured["net"].state_dict(), tmp_path / "fid_weights.pth")
    hub_before = torch.hub.get_dir()
    extractor = build_extractor(
        "inception", get_protocol("legacy_pytorch"), str(tmp_path / "fid_weights.pth")
    )
    assert torch.hub.get_dir() == hub_before
    assert extractor.fn(torch.rand(1, 3, 299, 299) * 255).shape == (1, 2048)
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    with pytest.raises(FeatureSetupError, match="state dict"):
        build_extractor("inception", get_protocol("dreamllm"), str(tmp_path / "bad.pth"))


@pytest.mark.parametrize("protocol", ["clean", "legacy_pytorch", "dreamllm"])
def test_in_process_score_equals_clean_fid(folders, protocol):
    from cleanfid.fid import compute_fid

    from dreamray.evals.features import resize_center_crop

    # dreamllm = clean-fid's legacy_pytorch with the reference's resize + crop in front.
    extra = {"custom_image_tranform": resize_center_crop(256)} if protocol == "dreamllm" else {}
    expected = compute_fid(
        str(folders / "a"),
        str(folders / "b"),
        mode=get_protocol(protocol).clean_fid_mode,
        custom_feat_extractor=tiny_feature_extractor(0),
        device=torch.device("cpu"),
        num_workers=0,
        verbose=False,
        **extra,
    )
    ours = score_folders(folders / "a", _settings(protocol), ref_images=folders / "b")
    assert ours["fid"] == pytest.approx(float(expected), rel=1e-6)
