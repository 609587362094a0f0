"""Evaluation plumbing: FID feature protocols and pools, caption/question manifests, VQA.

The feature-protocol helpers are re-exported lazily, so that importing a light submodule
(`dreamray.evals.vqa_data`, `dreamray.evals.results`) does not import torch and clean-fid.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PROTOCOLS": "dreamray.evals.features",
    "build_extractor": "dreamray.evals.features",
    "get_protocol": "dreamray.evals.features",
    "tiny_feature_extractor": "dreamray.evals.features",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dreamray.evals' has no attribute {name!r}")
