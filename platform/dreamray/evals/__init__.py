"""Evaluation plumbing: FID feature protocols and pools, caption/question manifests, VQA.

Import submodules directly for the heavier pieces (`dreamray.evals.fid_eval` needs Ray);
this package itself only exposes the feature protocol helpers.
"""

from dreamray.evals.features import (
    PROTOCOLS,
    build_extractor,
    get_protocol,
    tiny_feature_extractor,
)

__all__ = ["PROTOCOLS", "build_extractor", "get_protocol", "tiny_feature_extractor"]
