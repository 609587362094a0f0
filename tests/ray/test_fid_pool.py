"""FID through the Ray actor pool (the CLI): parity with clean-fid, merged = single-pass stats."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamray.evals import tiny_feature_extractor
from dreamray.evals.fid_eval import FidSettings, folder_stats, start_pool
from dreamray.evals.pool import PoolOptions
from dreamray.evals.synthetic_images import write_varied_images
from dreamray.metrics.fid import load_stats

REPO = Path(__file__).resolve().parents[2]
N_PER_FOLDER = 150


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_pool")
    write_varied_images(root / "a", N_PER_FOLDER, seed=0)
    write_varied_images(root / "b", N_PER_FOLDER, seed=1, tint=(0.15, -0.05, 0.1))
    return root


def _coco_fid_main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("coco_fid_cli", REPO / "evals" / "coco_fid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.mark.parametrize("protocol", ["clean", "legacy_pytorch"])
def test_cli_score_on_actor_pool_equals_clean_fid(ray_cluster, folders, protocol, tmp_path, capsys):
    from cleanfid.fid import compute_fid

    argv = [
        "score",
        "--images",
        str(folders / "a"),
        "--ref-images",
        str(folders / "b"),
        "--protocol",
        protocol,
        "--feature-extractor",
        "tiny:0",
        "--num-actors",
        "2",
        "--chunk-size",
        "17",
        "--out",
        str(tmp_path / "fid.json"),
        "--save-stats",
        str(tmp_path / "a.npz"),
        "--no-progress",
    ]
    assert _coco_fid_main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = compute_fid(
        str(folders / "a"),
        str(folders / "b"),
        mode=protocol,
        custom_feat_extractor=tiny_feature_extractor(0),
        device=torch.device("cpu"),
        num_workers=0,
        verbose=False,
    )
    assert printed["fid"] == pytest.approx(float(expected), rel=1e-6)
    assert printed["n"] == printed["n_ref"] == N_PER_FOLDER
    assert printed["card"]["protocol"] == protocol and printed["skipped"] == []
    assert json.loads((tmp_path / "fid.json").read_text())["fid"] == printed["fid"]
    # The statistics merged from 9 chunks on 2 actors equal one in-process pass over the folder.
    # Ray gives a 1-CPU actor one torch thread; torch's bilinear resize rounds differently with
    # more threads (float32, ~1e-7), so the single pass runs with one thread too.
    single = FidSettings(
        protocol=protocol,
        extractor="tiny:0",
        chunk_size=10**6,
        progress=False,
        pool=PoolOptions(num_actors=0),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with start_pool(single) as pool:
            one_mu, one_sigma = folder_stats(folders / "a", single, pool, "single").stats.mean_cov()
    finally:
        torch.set_num_threads(threads)
    merged = load_stats(tmp_path / "a.npz")
    np.testing.assert_allclose(merged.mu, one_mu, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(merged.sigma, one_sigma, rtol=1e-9, atol=1e-12)
