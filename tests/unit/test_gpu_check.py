"""benchmarks/gpu_check.py: its FLOPs formula against hand counts, and its tiny mode end to end
on CPU (model step, generation, FID features; no Ray), so that the GPU check cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_check  # noqa: E402
import gpu_check_flops as gf  # noqa: E402
import gpu_check_model as gm  # noqa: E402
from gpu_check_report import ERROR, Report  # noqa: E402


def _small_llama():
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    config._attn_implementation = "sdpa"
    return config


def test_llm_flops_per_token_against_a_hand_count():
    config = _small_llama()
    # per layer: q 64x64 + k 64x32 + v 64x32 (2 kv heads of 16) + o 64x64 + MLP 3 x 64x128
    #   = 4096 + 2048 + 2048 + 4096 + 24576 = 36864; two layers + LM head 64x100 = 80128
    assert gf.llm_matmul_params(config) == 80128
    # 6 x 80128 + 12 x 2 layers x L=16 x d_attn=64 = 480768 + 24576
    assert gf.llm_train_flops_per_token(config, 16) == 505344


def test_the_formula_is_three_forwards_of_what_torch_counts():
    from transformers import LlamaForCausalLM

    config, seq_len = _small_llama(), 16
    model = LlamaForCausalLM(config).eval()
    ids = torch.zeros(1, seq_len, dtype=torch.long)
    forward = gf.count_forward_flops(lambda: model(input_ids=ids))
    assert 3 * forward == seq_len * gf.llm_train_flops_per_token(config, seq_len)


def test_peak_table_by_device_name():
    assert gf.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gf.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert gf.peak_bf16_tflops("NVIDIA H200") == 989.0
    assert gf.peak_bf16_tflops("cpu (2 cores)") is None


def test_a_failing_part_is_an_error_row_and_the_json_is_written(tmp_path):
    report = Report("cpu", "tiny", {}, tmp_path / "out.json")

    def broken():
        raise RuntimeError("boom | on purpose")

    gpu_check.run_part(report, "generation", broken)
    gpu_check.run_part(report, "fid_features", lambda: [gpu_check.Row("fid_features", "x", 2.0,
                                                                       "img/s")])
    assert [(r.part, r.status) for r in report.rows] == [("generation", ERROR),
                                                         ("fid_features", "info")]
    assert "RuntimeError: boom" in report.rows[0].note
    saved = json.loads((tmp_path / "out.json").read_text())
    assert [r["part"] for r in saved["rows"]] == ["generation", "fid_features"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    mp = pytest.MonkeyPatch()
    mp.setenv("OUT", str(out))
    try:
        report = gpu_check.main(["--tiny", "--peak-tflops", "0.5"])
    finally:
        mp.undo()
    return report, out


def test_tiny_mode_has_every_row_and_no_error(tiny_run, capsys):
    report, out = tiny_run
    checks = {(r.part, r.check.split(" (")[0]): r for r in report.rows}
    assert set(checks) == {
        ("model_step", "MFU"), ("model_step", "seconds per optimizer step"),
        ("model_step", "tokens/s"), ("model_step", "model FLOPs per token"),
        ("generation", "image generation"), ("fid_features", "FID features, network"),
        ("fid_features", "FID features, files -> statistics"),
        ("dag_parallel", "dag_parallel ratio"),
    }
    measured = [r for r in report.rows if r.part != "dag_parallel"]
    assert all(r.status == "info" and r.value > 0 for r in measured), report.rows
    dag = checks[("dag_parallel", "dag_parallel ratio")]
    assert dag.status == "skipped" and "tiny mode" in dag.note
    assert "(64 px, 2 DDPM steps, guidance 7.5)" in checks[("generation", "image generation")].check
    saved = json.loads((out / "gpu_check.json").read_text())
    assert len(saved["rows"]) == len(report.rows) and saved["ratio"] is None


def test_tiny_mode_mfu_comes_from_the_formula(tiny_run, tmp_path):
    report, _ = tiny_run
    mfu = next(r for r in report.rows if r.check == "MFU")
    d = mfu.details
    tokens = 2 * 1 * 96  # micro-batch x accumulation x row length of the tiny settings
    assert d["tokens"] == tokens
    config = gm.llm_config(gm.benchmark_tokenizer(tmp_path / "tokenizer"), tiny=True)
    assert d["llm"] == tokens * gf.llm_train_flops_per_token(config, 96)
    towers = d["tower_forward_flops_per_image"]
    # tiny CLIP (32 px, patch 8: 16 patches + CLS = 17 tokens, width 32, MLP 64, 2 layers):
    # patch conv 2 x 16 x (3x8x8) x 32 = 196608; per layer q,k,v,o 4 x 2x17x32x32 = 139264,
    # MLP 2 x 2x17x32x64 = 139264, QK^T and AV 2 x 2x17x17x32 = 36992
    assert towers["clip"] == 196608 + 2 * (139264 + 139264 + 36992)
    images = 2 * 2  # rows x images per row: each is a CLIP input and a diffusion target
    # 6 x (CLIP patches x 32 -> 64 + 8 dream queries x 64 -> 32 cross-attention), per image
    assert d["projectors"] == 6 * (images * 16 * 32 * 64 + images * 8 * 64 * 32)
    assert d["clip"] == images * towers["clip"]
    assert d["vae_encoder"] == images * towers["vae_encoder"]
    assert d["unet"] == images * towers["unet"] * gf.UNET_PASSES_PER_TRAIN_STEP
    total = d["llm"] + d["projectors"] + d["clip"] + d["vae_encoder"] + d["unet"]
    assert d["total_flops_per_step"] == pytest.approx(total)
    assert mfu.value == pytest.approx(100 * total / d["step_s"] / 0.5e12)

