"""`dreamllm` is a Hugging Face model type once dreamray is imported: the auto classes load a
saved artifact as the same DreamLLM, registration is idempotent, `import dreamray` is torch-free."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch
from model_fixtures import built_model, make_batch

import dreamray
from dreamray.model import hf_import_hook
from dreamray.model.dreamllm import DreamLLM
from dreamray.model.hf_registration import AutoDreamLLM, register_all
from dreamray.model.plugin_config import DreamLLMHFConfig


@pytest.fixture(scope="module")
def artifact(tiny_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "artifact"
    built_model(tiny_zoo).save_pretrained(out)
    return out


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["clip_pixel_values"])
        out, _ = model.run_llm(embeds, batch["attention_mask"])
    return out.logits


def test_auto_classes_load_the_artifact_as_the_same_dreamllm(artifact):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(artifact)
    assert isinstance(config, DreamLLMHFConfig) and config.model_type == "dreamllm"
    assert config.llm_config["model_type"] == "llama" and config.tie_word_embeddings is False
    assert config.dreamllm["num_dream_queries"] == 8
    auto = AutoModelForCausalLM.from_pretrained(artifact)
    direct = DreamLLM.from_pretrained(artifact)
    assert type(auto) is DreamLLM
    batch = make_batch(direct, "mixed")
    expected = _logits(direct, batch)
    assert expected.abs().sum() > 0
    assert torch.equal(_logits(auto, batch), expected)
    half = AutoModelForCausalLM.from_pretrained(artifact, dtype="bfloat16")
    assert half.llm.get_input_embeddings().weight.dtype == torch.bfloat16


def test_auto_loading_refuses_what_a_dreamllm_cannot_honour(artifact):
    from transformers import AutoModelForCausalLM

    with pytest.raises(TypeError, match="load_in_8bit"):
        AutoModelForCausalLM.from_pretrained(artifact, load_in_8bit=True)


def test_registration_is_idempotent():
    from transformers import AutoConfig, AutoModelForCausalLM

    finders = sum(isinstance(f, hf_import_hook.AutoRegistrationFinder) for f in sys.meta_path)
    hf_import_hook.install()
    hf_import_hook.install()
    register_all()
    importlib.reload(dreamray)
    assert type(AutoConfig.for_model("dreamllm")) is DreamLLMHFConfig
    assert AutoModelForCausalLM._model_mapping[DreamLLMHFConfig] is AutoDreamLLM
    after = sum(isinstance(f, hf_import_hook.AutoRegistrationFinder) for f in sys.meta_path)
    assert after == finders <= 1


def test_artifacts_of_the_earlier_config_layout_still_load(artifact, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(artifact, old)
    config = json.loads((artifact / "config.json").read_text())
    # before: the LLM's own config at the top level, the plugin section added to it
    (old / "config.json").write_text(json.dumps({**config["llm_config"],
                                                 "dreamllm": config["dreamllm"]}))
    loaded, reference = DreamLLM.from_pretrained(old), DreamLLM.from_pretrained(artifact)
    batch = make_batch(reference, "text")
    assert torch.equal(_logits(loaded, batch), _logits(reference, batch))


def test_importing_dreamray_registers_without_importing_torch(artifact, tmp_path):
    """A fresh interpreter: `import dreamray` alone, then the plain transformers API."""
    ids = [1, 5, 9, 33, 2]
    code = (
        "import sys\n"
        "import dreamray\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(artifact)!r})\n"
        "print(type(model).__module__, type(model).__name__)\n"
        f"ids = torch.tensor([{ids!r}])\n"
        "with torch.no_grad():\n"
        "    out, _ = model.run_llm(model.embed(ids, None), torch.ones_like(ids))\n"
        f"torch.save(out.logits, {str(tmp_path / 'logits.pt')!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["dreamray.model.dreamllm", "DreamLLM"]
    direct = DreamLLM.from_pretrained(artifact)
    tensor = torch.tensor([ids])
    with torch.no_grad():
        expected, _ = direct.run_llm(direct.embed(tensor, None), torch.ones_like(tensor))
    logits = torch.load(tmp_path / "logits.pt", weights_only=True)
    # another process: same weights, summation order may differ in the last bits
    torch.testing.assert_close(logits, expected.logits, rtol=1e-5, atol=1e-6)
    assert expected.logits.abs().sum() > 0
