"""Checks, run in the driver before any actor starts, that an eval's weights are on local disk.

Eval workers never download: on an offline cluster a download dies deep inside an actor with a
DNS error, and actors sharing a node would race writing the same cache file. So a missing file
is reported up front, with the paths looked at and the flag (CLI) or spec field (recipe) that
provides it. The one exception is clean-fid's own Inception file at its default place: where the
machine is online (`HF_HUB_OFFLINE` unset), the driver fetches it once, as clean-fid would have.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dreamray.config.eval_specs import CocoFidParams


class MissingWeightsError(FileNotFoundError):
    """Weights an eval needs are not on local disk (the message says where to put them)."""


def require_inception_weights(
    protocol: str,
    weights: str | None,
    *,
    extractor: str,
    option: str,
) -> Path | None:
    """The Inception file an FID protocol will load, checked to exist.

    Args:
        protocol: an FID protocol name (`clean` loads clean-fid's TorchScript network, the
            others pytorch-fid's state dict).
        weights: the file given by the user; None: clean-fid's default location.
        extractor: the feature extractor spec; only `inception` needs weights.
        option: how the user gives `weights` (a CLI flag or a spec field), named in the error.

    Returns:
        The file that will be loaded, or None when the extractor needs no weights (`tiny:SEED`).

    Raises:
        MissingWeightsError: the file is missing (the message names the path and `option`).
        FeatureSetupError: an unknown protocol.
    """
    from dreamray.evals.features import (
        INCEPTION_EXTRACTOR,
        default_inception_file,
        download_inception,
        get_protocol,
        inception_download_url,
    )

    if extractor != INCEPTION_EXTRACTOR:
        return None
    spec = get_protocol(protocol)
    default = default_inception_file(spec)
    path = default if weights is None else Path(weights).expanduser()
    if path.is_file():
        return path
    fetch = f"download {default.name} once from {inception_download_url(spec)}"
    if weights is None and not _offline():
        try:
            return download_inception(spec)
        except Exception as err:  # noqa: BLE001 - any failure to fetch becomes the clear error
            fetch = f"fetching it failed ({type(err).__name__}: {err}); {fetch}"
    if weights is not None:
        raise MissingWeightsError(
            f"{option} {weights}: no such file (looked at {path.absolute()}); FID protocol "
            f"{protocol} loads {default.name}: {fetch}"
        )
    raise MissingWeightsError(
        f"FID protocol {protocol} needs the Inception file {default.name}, which is not on this "
        f"machine (looked at {path}) and is never downloaded by an eval: {fetch}, then pass "
        f"{option} FILE or put it at {path}"
    )


def _offline() -> bool:
    # The platform's offline switch: tests and CI set it, as every offline cluster should.
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def require_clip_model(clip_dir: str | None, option: str) -> Path | None:
    """The CLIP re-ranking model's directory, checked to be a local HF model dir.

    Args:
        clip_dir: the directory; None: no re-ranking.
        option: how the user gives it (a CLI flag or a spec field), named in the error.

    Returns:
        The directory, or None when there is no re-ranking.

    Raises:
        MissingWeightsError: the directory has no `config.json` (a hub id is not fetched).
    """
    if clip_dir is None:
        return None
    from transformers.utils import CONFIG_NAME

    return _require_model_dir(clip_dir, CONFIG_NAME, option, "CLIP dir", "an HF CLIPModel dir")


def require_model_artifact(model_dir: str, option: str) -> Path:
    """A DreamLLM artifact directory, checked to hold its config.

    Args:
        model_dir: the artifact directory (ours or a released checkpoint).
        option: how the user gives it, named in the error.

    Returns:
        The directory.

    Raises:
        MissingWeightsError: the directory has no `config.json`.
    """
    from dreamray.contracts import CONFIG_FILE

    return _require_model_dir(
        model_dir, CONFIG_FILE, option, "model artifact", "a DreamLLM artifact dir"
    )


def _require_model_dir(model_dir: str, config: str, option: str, what: str, kind: str) -> Path:
    path = Path(model_dir).expanduser()
    if not (path / config).is_file():
        raise MissingWeightsError(
            f"{what} {model_dir} has no {config}: looked at {path / config}; "
            f"{option} takes {kind} on local disk (nothing is downloaded)"
        )
    return path


@dataclass(frozen=True)
class WeightSources:
    """How the user names each weights source of a coco_fid run (CLI flags or spec fields)."""

    inception_weights: str
    clip_model: str
    model: str


RECIPE_SOURCES = WeightSources(
    "eval.params.inception_weights", "eval.params.clip_model", "eval.model"
)


def require_coco_fid_weights(params: CocoFidParams, model_dir: str, sources: WeightSources) -> None:
    """Check, before any actor starts, that every weights file of a coco_fid run is local.

    Args:
        params: the run's spec.
        model_dir: the model artifact.
        sources: how the user names each source, for the error.

    Raises:
        MissingWeightsError: the first missing file, with where it was looked for.
    """
    require_inception_weights(
        params.protocol,
        params.inception_weights,
        extractor=params.feature_extractor,
        option=sources.inception_weights,
    )
    if params.clip_rerank and len(params.seeds) > 1:
        require_clip_model(params.clip_model, sources.clip_model)
    require_model_artifact(model_dir, sources.model)
