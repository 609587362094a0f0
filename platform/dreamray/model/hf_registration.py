"""`dreamllm` as a Hugging Face model type: `AutoConfig` and `AutoModelForCausalLM` load artifacts.

`register_config` / `register_model` add `DreamLLMHFConfig` and `AutoDreamLLM` to transformers'
auto classes (idempotent). `AutoDreamLLM` stands in for `DreamLLM` in the auto mapping and
imports it only when a model is loaded: registering then costs nothing but the config class, and
never imports diffusers or the model code while transformers' auto modules are initialising
(`dreamray.model.hf_import_hook` registers from inside their import).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from dreamray.model.plugin_config import DREAMLLM_MODEL_TYPE, DreamLLMHFConfig

# Keywords `AutoModelForCausalLM.from_pretrained` forwards for any model: the dir is local and
# `DreamLLM.from_pretrained` re-reads its config, so they carry nothing to act on.
_AUTO_LOADER_KEYWORDS = frozenset({
    "_from_auto", "adapter_kwargs", "cache_dir", "code_revision", "force_download",
    "local_files_only", "proxies", "revision", "subfolder", "token", "trust_remote_code",
})


class AutoDreamLLM:
    """What `AutoModelForCausalLM` maps `DreamLLMHFConfig` to; loads a `DreamLLM`."""

    config_class = DreamLLMHFConfig

    @classmethod
    def from_pretrained(cls, path: str | Path, *model_args: Any, **kwargs: Any) -> Any:
        """Load a DreamLLM artifact dir (``AutoModelForCausalLM.from_pretrained(dir)``).

        Args:
            path: the artifact dir.
            model_args: must be empty (a DreamLLM takes no positional model arguments).
            kwargs: ``dtype`` (or ``torch_dtype``: a torch dtype, its name, or ``"auto"`` = as
                stored), ``spec`` (see `DreamLLM.from_pretrained`); ``config`` and the auto
                loader's hub keywords are accepted and not used.

        Returns:
            The `DreamLLM`, towers frozen.

        Raises:
            TypeError: on positional model arguments or keywords a DreamLLM cannot honour.
        """
        from dreamray.model.dreamllm import DreamLLM

        dtype = _dtype(kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None))
        spec = kwargs.pop("spec", None)
        kwargs.pop("config", None)
        unknown = sorted(set(kwargs) - _AUTO_LOADER_KEYWORDS)
        if model_args or unknown:
            raise TypeError(
                f"DreamLLM.from_pretrained takes no positional model arguments and no {unknown}"
            )
        return DreamLLM.from_pretrained(path, spec=spec, dtype=dtype)


def _dtype(dtype: Any, torch_dtype: Any) -> Any:
    import torch

    value = dtype if dtype is not None else torch_dtype
    if value is None or value == "auto":
        return None
    if isinstance(value, str):
        value = getattr(torch, value, None)
    if not isinstance(value, torch.dtype):
        raise TypeError(f"dtype must be a torch dtype or its name, got {dtype or torch_dtype!r}")
    return value


def register_config(configuration_auto: ModuleType) -> None:
    """Register `DreamLLMHFConfig` as model type ``dreamllm`` with `AutoConfig` (idempotent).

    Args:
        configuration_auto: ``transformers.models.auto.configuration_auto``.
    """
    configuration_auto.AutoConfig.register(DREAMLLM_MODEL_TYPE, DreamLLMHFConfig, exist_ok=True)


def register_model(modeling_auto: ModuleType) -> None:
    """Map `DreamLLMHFConfig` to `AutoDreamLLM` in `AutoModelForCausalLM` (idempotent).

    Args:
        modeling_auto: ``transformers.models.auto.modeling_auto``.
    """
    modeling_auto.AutoModelForCausalLM.register(DreamLLMHFConfig, AutoDreamLLM, exist_ok=True)


def register_all() -> None:
    """Register both now (imports transformers' auto modules)."""
    from transformers.models.auto import configuration_auto, modeling_auto

    register_config(configuration_auto)
    register_model(modeling_auto)
