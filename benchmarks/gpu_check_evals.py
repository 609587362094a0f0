"""The evaluation-side parts of `gpu_check.py`: FID feature throughput and `dag_parallel`.

FID features use the `dreamllm` protocol's network (pytorch-fid's FID Inception, what the paper's
scoring runs) through `dreamray.evals.features.build_extractor`, as an eval does. Its weights
cannot be downloaded on an offline machine: when no weights file is given (--inception-weights)
and none sits at clean-fid's default place, a file of random weights of the same architecture is
written and loaded the same way. Speed does not depend on the values; the row says which it was.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from gpu_check_model import image_side
from gpu_check_parts import sync
from gpu_check_report import Row, judged

DAG_TARGET = 0.60
FID_PROTOCOL = "dreamllm"
INCEPTION_SIDE = 299  # the network's input side in every FID protocol


def random_fid_inception_file(path: Path) -> Path:
    """Write a state dict of pytorch-fid's FID Inception with random weights.

    The architecture is clean-fid's `fid_inception_v3` (torchvision's Inception v3 with 1008
    classes and FID's patched mixed blocks), built without its download.

    Args:
        path: the file to write.

    Returns:
        `path`.
    """
    from cleanfid import inception_pytorch as fid_net

    net = fid_net._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    patched = {
        "Mixed_5b": fid_net.FIDInceptionA(192, pool_features=32),
        "Mixed_5c": fid_net.FIDInceptionA(256, pool_features=64),
        "Mixed_5d": fid_net.FIDInceptionA(288, pool_features=64),
        "Mixed_6b": fid_net.FIDInceptionC(768, channels_7x7=128),
        "Mixed_6c": fid_net.FIDInceptionC(768, channels_7x7=160),
        "Mixed_6d": fid_net.FIDInceptionC(768, channels_7x7=160),
        "Mixed_6e": fid_net.FIDInceptionC(768, channels_7x7=192),
        "Mixed_7b": fid_net.FIDInceptionE_1(1280),
        "Mixed_7c": fid_net.FIDInceptionE_2(2048),
    }
    for name, block in patched.items():
        setattr(net, name, block)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def inception_weights(settings, root: Path) -> tuple[str, str]:
    """The weights file to load and what it is: given, clean-fid's cached file, or random."""
    from dreamray.evals.features import default_inception_file, get_protocol

    if settings.inception_weights:
        return settings.inception_weights, "given weights"
    cached = default_inception_file(get_protocol(FID_PROTOCOL))
    if cached.is_file() and cached.stat().st_size > 1 << 20:
        return str(cached), "clean-fid's cached weights"
    return str(random_fid_inception_file(root / "fid_inception_random.pth")), (
        "random weights (no Inception file on this machine; same network, same cost)")


def network_images_per_s(extractor, settings) -> float:
    """Inception alone on device-resident 299 px batches: images per second."""
    side, device = INCEPTION_SIDE, settings.device
    x = torch.rand(settings.fid_batch, 3, side, side, device=device) * 255
    with torch.no_grad():
        extractor.fn(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(settings.fid_network_batches):
            features = extractor.fn(x)
        sync(device)
    if features.shape != (settings.fid_batch, extractor.dim):
        raise RuntimeError(f"features of shape {tuple(features.shape)}")
    return settings.fid_network_batches * settings.fid_batch / (time.perf_counter() - start)


def fid_part(settings, root: Path) -> list[Row]:
    """FID feature img/s: the network alone, and files -> statistics in one `FeatureWorker`.

    Args:
        settings: the run's settings (device, image count, batch, weights).
        root: a scratch directory.

    Returns:
        Two rows.
    """
    from dreamray.evals.features import build_extractor, get_protocol
    from dreamray.evals.fid_eval import FeatureWorker
    from dreamray.evals.synthetic_images import write_varied_images

    weights, origin = inception_weights(settings, root)
    extractor = build_extractor("inception", get_protocol(FID_PROTOCOL), weights, settings.device)
    network = network_images_per_s(extractor, settings)
    side = image_side(settings.tiny)  # the generated images' size
    files = write_varied_images(root / "images", settings.fid_images, seed=0, min_size=side,
                                max_size=side)
    worker = FeatureWorker(FID_PROTOCOL, "inception", weights, settings.fid_batch,
                           settings.device)
    start = time.perf_counter()
    out = worker.stats([str(f) for f in files])
    seconds = time.perf_counter() - start
    n = len(files) - len(out["skipped"])
    return [
        Row("fid_features", "FID features, network", network, "img/s",
            note=f"{FID_PROTOCOL} protocol's Inception, batch {settings.fid_batch} at "
                 f"{INCEPTION_SIDE} px on {settings.device}; {origin}"),
        Row("fid_features", "FID features, files -> statistics", n / seconds, "img/s",
            note=f"{n} files of {side} px, one FeatureWorker (decode, resize, network, stats) in "
                 f"this process", details={"images": n, "seconds": seconds}),
    ]


def tiny_recipe(settings, root: Path):
    """The tiny assets under `root/.cache/tiny` and the tiny recipe reading them."""
    from dreamray.config import load_recipe
    from dreamray.data.tiny import build_tiny_data
    from dreamray.evals.tiny import build_tiny_evals
    from dreamray.zoo import build_tiny_zoo

    from_repo = Path(__file__).resolve().parents[1]
    tiny = root / ".cache" / "tiny"
    build_tiny_zoo(tiny / "zoo", seed=0)
    build_tiny_data(tiny / "data", seed=0, use_ray=False)
    build_tiny_evals(tiny / "evals")
    branches = ("stage1_comprehension", "stage1_creation")
    overrides: dict = {"root": str(root)}
    for key, value in (("data.num_samples", settings.dag_samples),
                       ("checkpoint.every_n_steps", settings.dag_checkpoint_every),
                       ("checkpoint.report_every_n_steps", settings.dag_checkpoint_every)):
        overrides |= {f"stages.{n}.{key}": value for n in branches}
    return load_recipe(from_repo / "pipelines" / "recipes" / "tiny.yaml", overrides)


def dag_part(settings, root: Path) -> list[Row]:
    """The two stage-I branches in parallel vs one after the other (`dag_parallel.py`).

    Args:
        settings: CPUs of the local cluster, samples per branch, checkpoint cadence.
        root: a scratch directory for the tiny assets and the run dirs.

    Returns:
        One row: parallel / sequential wall time.
    """
    # the tiny recipe's workers are CPU-only: keep DeepSpeed (imported in them) off the GPU
    os.environ["DS_ACCELERATOR"] = "cpu"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import dag_parallel
    import ray

    recipe = tiny_recipe(settings, root)
    ray.init(address="local", num_cpus=settings.dag_cpus, num_gpus=0, include_dashboard=False,
             log_to_driver=False)
    try:
        dag_parallel.run_stages(recipe, root / "warmup", dag_parallel.STAGE_ONE[:1])
        result = dag_parallel.one_repeat(recipe, root, 0)
    finally:
        ray.shutdown()
    sequential, parallel = result["sequential"][0], result["parallel"][0]
    ratio = parallel / sequential
    return [Row("dag_parallel", "dag_parallel ratio", ratio, "x", f"<= {DAG_TARGET}",
                judged(ratio <= DAG_TARGET, not settings.tiny),
                note=f"parallel {parallel:.1f} s / sequential {sequential:.1f} s, "
                     f"{settings.dag_cpus} CPUs, {settings.dag_samples} samples per branch",
                details={"sequential_s": sequential, "parallel_s": parallel})]
