"""The merge of the stage-I branches: the reference's file pick, validated, into a new artifact.

`clip_vision_embedding.bin` comes from the comprehension branch, `dream_embedding.bin` and
`stable_diffusion_head.bin` from the creation branch (each source is named by the MergeSpec).
Besides the plugin files, the merged artifact carries `config.json`, the tokenizer files and
`preprocessor_config.json` of the `clip_vision_embedding` source (the comprehension branch):
stage II re-loads the base LLM (`init.llm: base`) and needs from the merge only the plugins,
plus a tokenizer with the DreamLLM special tokens and the model config. `model.safetensors`
is NOT copied (the stage-I LLM is frozen, i.e. the base LLM; copying 13 GB at 7B would buy
nothing), so no stage may read its LLM from a merge (the runner refuses such a recipe).

Every picked file is checked against its source's stage.json sha256, loaded with
`weights_only=True` to check its keys and that the widths agree (query width = CLIP projector
output = condition projector input), and the result is published atomically with its own
stage.json.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from dreamray.config.specs import MergeStageSpec
from dreamray.contracts import (
    CONFIG_FILE,
    DIFFUSION_PLUGIN,
    DREAM_PLUGIN,
    MERGE_KIND,
    PLUGIN_FILES,
    PROCESSOR_FILE,
    STAGE_FILE,
    TOKENIZER_FILES,
    VISION_PLUGIN,
    StageRef,
)
from dreamray.files import atomic_dir, sha256_file
from dreamray.orchestration.context import StageContext, StageOutcome
from dreamray.orchestration.manifest import (
    ManifestRecord,
    build_manifest,
    manifest_files,
    write_manifest,
)

# Keys each plugin file must have (the reference's key layout, as `model/artifact.py` writes it).
REQUIRED_PREFIXES = {
    VISION_PLUGIN: ("clip_vision_model.vision_model.", "projector.projector."),
    DREAM_PLUGIN: ("dream_queries",),
    DIFFUSION_PLUGIN: ("vae.", "unet.", "projector.projector."),
}
# Carried besides config.json when present: the tokenizer files and the CLIP image processor
# config of the artifact.
CARRIED_FILES = (*TOKENIZER_FILES, PROCESSOR_FILE)
# The plugin whose source also provides config.json and the tokenizer files.
CARRIER_PLUGIN = VISION_PLUGIN


class MergeError(ValueError):
    """A merge whose sources are missing, corrupted or do not fit together."""


def resolve_sources(stage: MergeStageSpec, inputs: dict[str, str]) -> dict[str, Path]:
    """The directory each plugin file is taken from.

    Args:
        stage: the merge spec.
        inputs: stage name -> local artifact directory.

    Returns:
        Plugin name -> source directory.

    Raises:
        MergeError: if a `stage:` source has no artifact in `inputs`.
    """
    out = {}
    for plugin, source in stage.merge.model_dump().items():
        ref = StageRef.parse(source)
        if ref is not None:
            if ref.name not in inputs:
                raise MergeError(f"merge.{plugin}: no artifact of stage {ref.name!r} was given")
            out[plugin] = Path(inputs[ref.name])
        else:
            out[plugin] = Path(source)
    return out


def expected_sha256(source: Path, filename: str) -> str | None:
    """The file's sha256 in the source's stage.json, or None for a source without one.

    Raises:
        MergeError: if the source has a stage.json that does not list the file.
    """
    manifest_path = source / STAGE_FILE
    if not manifest_path.exists():
        return None  # a plain directory, e.g. a released checkpoint: hashed, not cross-checked
    files = manifest_files(json.loads(manifest_path.read_text()))
    if filename not in files:
        raise MergeError(f"{source}: stage.json does not list {filename}")
    return files[filename]


def check_file(source: Path, filename: str) -> str:
    """Check a picked file exists and matches its source's stage.json; return its sha256.

    Raises:
        MergeError: if it is missing or its bytes differ from the recorded hash.
    """
    path = source / filename
    if not path.is_file():
        raise MergeError(f"{path}: missing")
    actual = sha256_file(path)
    expected = expected_sha256(source, filename)
    if expected is not None and actual != expected:
        raise MergeError(f"{path}: sha256 {actual[:12]}... differs from the source's "
                         f"stage.json ({expected[:12]}...): the source artifact is corrupted")
    return actual


def load_state_dict(path: Path) -> dict[str, Any]:
    """Load a plugin `.bin` safely (`weights_only`), memory-mapped when possible."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # mmap needs the zip format of torch.save; legacy files load without it.
        return torch.load(path, map_location="cpu", weights_only=True)


def check_keys(plugin: str, state: dict[str, Any]) -> list[str]:
    """Problems with a plugin state dict's keys (one line each)."""
    problems = []
    for prefix in REQUIRED_PREFIXES[plugin]:
        if not any(k == prefix or k.startswith(prefix) for k in state):
            problems.append(f"{PLUGIN_FILES[plugin]}: no key starting with {prefix!r}")
    return problems


def _projector_weights(state: dict[str, Any]) -> list[Any]:
    # Linear: projector.projector.weight; MLP: projector.projector.<i>.weight, in layer order.
    names = [k for k in state if k.startswith("projector.projector.") and k.endswith("weight")]
    names.sort(key=lambda k: [int(p) if p.isdigit() else -1 for p in k.split(".")])
    return [state[k] for k in names]


def check_shapes(states: dict[str, dict[str, Any]]) -> list[str]:
    """Problems with how the three plugins' widths fit together.

    Args:
        states: plugin name -> state dict.

    Returns:
        One line per mismatch; empty when the queries' width is the CLIP projector's output
        width and the condition projector's input width.
    """
    queries = states["dream_embedding"]["dream_queries"]
    if queries.ndim != 3 or queries.shape[0] != 1:
        return [f"dream_queries: shape {tuple(queries.shape)}, expected [1, Q, llm_dim]"]
    width = queries.shape[2]
    problems = []
    clip_proj = _projector_weights(states["clip_vision_embedding"])
    if clip_proj and clip_proj[-1].shape[0] != width:
        problems.append(f"clip_vision_embedding projector outputs {clip_proj[-1].shape[0]}, "
                        f"the dream queries are {width} wide")
    cond_proj = _projector_weights(states["stable_diffusion_head"])
    if cond_proj and cond_proj[0].shape[1] != width:
        problems.append(f"stable_diffusion_head projector reads {cond_proj[0].shape[1]}, "
                        f"the dream queries are {width} wide")
    return problems


def carried_files(carrier: Path) -> list[str]:
    """config.json and the tokenizer files present in the carrier source.

    Raises:
        MergeError: if the carrier has no config.json.
    """
    if not (carrier / CONFIG_FILE).is_file():
        raise MergeError(f"{carrier}: no {CONFIG_FILE} to carry into the merged artifact")
    return [CONFIG_FILE] + [f for f in CARRIED_FILES if (carrier / f).is_file()]


def check_same_tokenizer(sources: dict[str, Path]) -> list[str]:
    """Both branches must share the tokenizer: the merged plugins assume the same token ids."""
    files = {s / "tokenizer.json" for s in sources.values()}
    present = [f for f in files if f.is_file()]
    if len({sha256_file(f) for f in present}) > 1:
        return ["the sources' tokenizer.json files differ: the stage-I branches must start "
                "from the same base LLM and tokenizer"]
    return []


def run_merge_stage(stage: MergeStageSpec, ctx: StageContext) -> StageOutcome:
    """Pick, validate and publish the plugin files of the merge.

    Args:
        stage: the merge stage spec.
        ctx: where the inputs are and where the artifact goes.

    Returns:
        The outcome (0 steps, 0 samples).

    Raises:
        MergeError: listing every problem found in the sources.
    """
    started = time.time()
    sources = resolve_sources(stage, dict(ctx.inputs))
    picked = {p: check_file(sources[p], PLUGIN_FILES[p]) for p in PLUGIN_FILES}
    states = {p: load_state_dict(sources[p] / PLUGIN_FILES[p]) for p in PLUGIN_FILES}
    problems = [line for p in PLUGIN_FILES for line in check_keys(p, states[p])]
    problems += check_shapes(states) if not problems else []
    problems += check_same_tokenizer(sources)
    if problems:
        raise MergeError("merge: " + "; ".join(problems))
    with atomic_dir(ctx.artifact_dir) as tmp:
        for plugin, filename in PLUGIN_FILES.items():
            shutil.copy2(sources[plugin] / filename, tmp / filename)
        carrier = sources[CARRIER_PLUGIN]
        for filename in carried_files(carrier):
            shutil.copy2(carrier / filename, tmp / filename)
        origin = {PLUGIN_FILES[p]: {"source": str(sources[p]), "sha256": picked[p]}
                  for p in PLUGIN_FILES}
        manifest = build_manifest(tmp, ManifestRecord(
            stage=ctx.name, kind=MERGE_KIND, spec_hash=ctx.spec_hash, identity=ctx.identity,
            inputs=ctx.input_digests, details={"picked": origin}))
        changed = [f for f, o in origin.items() if manifest["files"][f] != o["sha256"]]
        if changed:
            raise MergeError(f"merge: {changed} changed while being copied")
        write_manifest(tmp, manifest)
    return StageOutcome(artifact_dir=str(ctx.artifact_dir), started_at=started,
                        ended_at=time.time())
