"""dreamray: train and evaluate DreamLLM-style multimodal LLMs on Ray."""

__version__ = "0.1.0"
