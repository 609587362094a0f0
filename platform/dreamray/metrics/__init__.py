"""Pure evaluation math: FID from sufficient statistics, VQA accuracy variants.

Imports neither Ray nor DeepSpeed (nor torch): workers and CLIs share it freely.
"""

from dreamray.metrics.fid import (
    FeatureStats,
    FidError,
    ReferenceStats,
    StatsDimensionError,
    fid_from_stats,
    frechet_distance,
    load_stats,
    save_stats,
)
from dreamray.metrics.vqa import (
    VARIANTS,
    VqaAnswersError,
    evalai_normalize,
    normalize_answer,
    summarize_accuracy,
    vqa_accuracy,
)

__all__ = [
    "VARIANTS",
    "FeatureStats",
    "FidError",
    "ReferenceStats",
    "StatsDimensionError",
    "VqaAnswersError",
    "evalai_normalize",
    "fid_from_stats",
    "frechet_distance",
    "load_stats",
    "normalize_answer",
    "save_stats",
    "summarize_accuracy",
    "vqa_accuracy",
]
