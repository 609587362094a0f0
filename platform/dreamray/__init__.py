"""dreamray: train and evaluate DreamLLM-style multimodal LLMs on Ray.

Importing it makes ``dreamllm`` a Hugging Face model type (`AutoConfig`,
`AutoModelForCausalLM`) without importing transformers: see `dreamray.model.hf_import_hook`.
"""

from dreamray.model.hf_import_hook import install as _install_hf_registration

__version__ = "0.1.0"

_install_hf_registration()
