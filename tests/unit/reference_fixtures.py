"""A tiny DreamLLM checkpoint written in the reference's own layout, without dreamray's writers.

`write_reference_checkpoint` follows the reference code (RunpeiDong/DreamLLM @ 9dc7677):

- tokenizer: ``projects/dreamllm/train.py`` lines 86-90 add ``special_tokens_dict``
  (``omni/models/dreamllm/tokenization_dreamllm.py`` lines 60-94: pad ``[PAD]`` + seven additional
  tokens) to a LLaMA SentencePiece tokenizer; the ids are the released checkpoint's
  (``added_tokens.json`` of dreamllm-7b-chat-v1.0, REFERENCE.md 1.2): ``[PAD]`` right after the
  base vocabulary, then ``<im_start> <dream_end> <dream_start> <im_patch> <im_end> <image>
  <dream>`` (not the list's order);
- ``config.json``: `DreamLLMConfig` (``omni/models/dreamllm/configuration_dreamllm.py`` lines
  145-223: LLaMA fields at the top, ``special_tokens2ids_dict`` filled as lines 225-235 do,
  ``plugins_init_kwargs`` / ``plugins_type`` as ``update_plugins`` lines 237-255 do from
  ``projects/dreamllm/configs/common.py`` lines 12-56 with ``embed_hidden_size`` set as
  ``configs/stage2/base.py`` lines 24-26, ``_target_`` as ``omni/config/lazy.py`` lines 52-58);
- LLM weights: ``DreamLLMForCausalMLM`` keys without the plugins (``modeling_dreamllm.py`` lines
  822-831, 1224-1235), each layer's persistent ``rotary_emb.inv_freq`` (line 105), sharded by
  size as transformers 4.35's ``save_pretrained`` (``model-0000k-of-0000M.safetensors`` +
  ``model.safetensors.index.json``);
- plugins: ``torch.save(plugin.state_dict())`` per plugin (``omni/models/dreamllm/
  modeling_plugins.py`` lines 167-169, 293-295, 447-449; keys of transformers 4's CLIP with its
  ``vision_model.`` level, the ``projector.projector`` linear layers).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from spm_fixtures import SPM_VOCAB, train_llama_spm

from dreamray.zoo import ZooPaths, tiny_llm_config

RELEASE_ORDER = ("<im_start>", "<dream_end>", "<dream_start>", "<im_patch>", "<im_end>",
                 "<image>", "<dream>")
NUM_QUERIES, HIDDEN = 8, 64
MODELING_PLUGINS = "omni.models.dreamllm.modeling_plugins"


def _tokenizer(out: Path):
    from transformers import AutoTokenizer

    (out / "tokenizer.model").write_bytes(train_llama_spm())
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.add_special_tokens({"additional_special_tokens": list(RELEASE_ORDER)})
    assert [tok.convert_tokens_to_ids(t) for t in RELEASE_ORDER] == list(range(401, 408))
    tok.save_pretrained(out)
    return tok


def _special_tokens2ids(tok) -> dict:
    out = {t: tok.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<unk>", "[PAD]")}
    extra = ("<image>", "<im_patch>", "<im_start>", "<im_end>", "<dream>", "<dream_start>",
             "<dream_end>")
    out["additional_special_tokens"] = {t: tok.convert_tokens_to_ids(t) for t in extra}
    return out


def _plugins_init_kwargs(zoo: ZooPaths) -> dict:
    common = {"pretrained_model_name_or_path": None, "embed_hidden_size": HIDDEN}
    return {
        "clip_vision_embedding": {
            "_target_": f"{MODELING_PLUGINS}.CLIPVisionEmbedding", "projector_type": "linear",
            "projector_depth": 1, "clip_vision_model_name_or_path": str(zoo.vision),
            "use_additional_post_layernorm": False, "select_layer": -2,
            "freeze_clip_vision_model": True, "freeze_embedding_layers": True,
            "freeze_projector": False, "local_files_only": True, **common,
        },
        "dream_embedding": {
            "_target_": f"{MODELING_PLUGINS}.DreamEmbedding", "num_dream_queries": NUM_QUERIES,
            "freeze_dream_queries": False, **common,
        },
        "stable_diffusion_head": {
            "_target_": f"{MODELING_PLUGINS}.StableDiffusionHead", "projector_type": "linear",
            "projector_depth": 1, "diffusion_name_or_path": str(zoo.diffusion),
            "freeze_vae": True, "freeze_unet": True, "freeze_projector": False,
            "local_files_only": True, **common,
        },
    }


def _config(tok, zoo: ZooPaths) -> dict:
    llama = tiny_llm_config(tok)
    fields = {k: getattr(llama, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
        "initializer_range", "rms_norm_eps", "use_cache", "bos_token_id", "eos_token_id",
        "pretraining_tp", "tie_word_embeddings", "attention_bias")}
    return {
        "architectures": ["DreamLLMForCausalMLM"], "model_type": "dreamllm", **fields,
        "pad_token_id": None, "rope_theta": 10000.0, "rope_scaling": None,
        "special_tokens2ids_dict": _special_tokens2ids(tok),
        "plugins_init_kwargs": _plugins_init_kwargs(zoo),
        "plugins_type": {"clip_vision_embedding": "embedding", "dream_embedding": "embedding",
                         "stable_diffusion_head": "head"},
        "loss_weight_lm": 1.0, "loss_weight_vm": 10.0, "loss_scale_schedule": "none",
        "log_attentions": False, "log_hidden_states": False, "torch_dtype": "float32",
        "transformers_version": "4.35.2",
    }


def _llm_state(config: dict) -> dict[str, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(**{k: v for k, v in config.items()
                           if k not in ("architectures", "model_type", "special_tokens2ids_dict",
                                        "plugins_init_kwargs", "plugins_type", "rope_scaling")})
    state = dict(LlamaForCausalLM(llama).state_dict())
    head_dim = HIDDEN // config["num_attention_heads"]
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for i in range(config["num_hidden_layers"]):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    return state


def _write_shards(state: dict[str, torch.Tensor], out: Path, max_bytes: int) -> None:
    """transformers 4.35's ``shard_checkpoint``: keys in order, a new shard when one overflows."""
    from safetensors.torch import save_file

    groups: list[dict] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > max_bytes:
            groups.append({})
            size = 0
        groups[-1][key] = tensor
        size += nbytes
    total = len(groups)
    weight_map = {}
    for k, group in enumerate(groups, start=1):
        name = f"model-{k:05d}-of-{total:05d}.safetensors"
        save_file({key: t.contiguous() for key, t in group.items()}, out / name,
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, name))
    total_size = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _plugin_states(zoo: ZooPaths) -> dict[str, dict[str, torch.Tensor]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModel

    clip = CLIPVisionModel.from_pretrained(zoo.vision).state_dict()
    unet = UNet2DConditionModel.from_pretrained(zoo.diffusion / "unet").state_dict()
    vae = AutoencoderKL.from_pretrained(zoo.diffusion / "vae").state_dict()
    vision = {f"clip_vision_model.vision_model.{k.removeprefix('vision_model.')}": v
              for k, v in clip.items()}
    vision["projector.projector.weight"] = torch.randn(HIDDEN, 32) * 0.02
    vision["projector.projector.bias"] = torch.randn(HIDDEN) * 0.02
    head = {**{f"unet.{k}": v for k, v in unet.items()}, **{f"vae.{k}": v for k, v in vae.items()}}
    head["projector.projector.weight"] = torch.randn(32, HIDDEN) * 0.02
    return {
        "clip_vision_embedding": vision,
        "dream_embedding": {"dream_queries": torch.randn(1, NUM_QUERIES, HIDDEN) * 0.02},
        "stable_diffusion_head": head,
    }


def write_reference_checkpoint(out: Path, zoo: ZooPaths, max_shard_bytes: int = 200_000) -> dict:
    """Write the tiny checkpoint (see the module docstring); the LLM is ~0.5 MB, so the default
    `max_shard_bytes` gives several shards.

    Args:
        out: the dir to create.
        zoo: the tiny zoo (the plugins' tower dirs, recorded in ``plugins_init_kwargs``).
        max_shard_bytes: shard size limit.

    Returns:
        ``{"llm": state, "<plugin>": state, "config": dict}``: what was written.
    """
    out.mkdir(parents=True)
    torch.manual_seed(7)
    tok = _tokenizer(out)
    assert len(tok) == SPM_VOCAB + 8
    config = _config(tok, zoo)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    llm = _llm_state(config)
    _write_shards(llm, out, max_shard_bytes)
    plugins = _plugin_states(zoo)
    for name, state in plugins.items():
        torch.save(state, out / f"{name}.bin")
    return {"llm": llm, **plugins, "config": config}
