"""FID feature protocols and feature extractors, built from clean-fid's own pieces.

A protocol is what happens between an image file and the feature network:

- `clean`: clean-fid's `clean` mode: PIL bicubic resize of each float channel to 299x299.
- `legacy_pytorch`: clean-fid's `legacy_pytorch` mode: torch bilinear (align_corners=False) to
  299x299, as pytorch-fid does inside its network.
- `dreamllm`: the reference's scoring (its vendored pytorch-fid 0.3.0 with `--resolution 256`):
  torchvision `Resize(256, bilinear)` + `CenterCrop(256)` on the PIL image, then the
  `legacy_pytorch` path. The reference rescales to [0, 1] before the network's bilinear resize
  and clean-fid after it; the two agree up to float32 rounding (bilinear is linear).

Image decoding, resizing and tensor conversion are clean-fid's (`cleanfid.utils.ResizeDataset`,
`cleanfid.resize.build_resizer`); the Inception networks are clean-fid's (TorchScript for `clean`,
pytorch-fid's FID Inception for the other two), loadable from a local weights file.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cleanfid.resize import build_resizer
from cleanfid.utils import ResizeDataset
from PIL import Image

from dreamray.config.eval_specs import FID_PROTOCOLS
from dreamray.files import sha256_file

PROTOCOLS = FID_PROTOCOLS
INCEPTION_DIM = 2048
TORCHSCRIPT_NAME = "inception-2015-12-05.pt"  # the file name clean-fid's loader expects
FID_INCEPTION_NAME = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's, via torch hub
# Where clean-fid's `torchscript_inception` looks for (and downloads) its network on Linux.
CLEAN_FID_CACHE = Path("/tmp")
INCEPTION_EXTRACTOR = "inception"
TINY_PREFIX = "tiny:"
TINY_DIM = 64


class FeatureSetupError(ValueError):
    """A protocol, extractor spec or weights file that cannot be used."""


@dataclass(frozen=True)
class Protocol:
    """How images become network inputs."""

    name: str
    clean_fid_mode: str
    pre_crop: int | None
    resize: str

    def card(self) -> dict[str, Any]:
        """The protocol's part of a score's protocol card."""
        pre = None
        if self.pre_crop is not None:
            pre = f"PIL bilinear resize (short side {self.pre_crop}) + center crop {self.pre_crop}"
        return {
            "protocol": self.name,
            "clean_fid_mode": self.clean_fid_mode,
            "pre_transform": pre,
            "resize": self.resize,
            "clean_fid_version": importlib.metadata.version("clean-fid"),
        }


_PROTOCOLS = {
    "clean": Protocol("clean", "clean", None, "PIL bicubic per float channel to 299x299"),
    "legacy_pytorch": Protocol(
        "legacy_pytorch", "legacy_pytorch", None, "torch bilinear (align_corners=False) to 299x299"
    ),
    "dreamllm": Protocol(
        "dreamllm", "legacy_pytorch", 256, "torch bilinear (align_corners=False) to 299x299"
    ),
}


def get_protocol(name: str) -> Protocol:
    """Look a protocol up by name.

    Raises:
        FeatureSetupError: an unknown name.
    """
    if name not in _PROTOCOLS:
        raise FeatureSetupError(f"unknown FID protocol {name!r}; known: {list(PROTOCOLS)}")
    return _PROTOCOLS[name]


def resize_center_crop(size: int) -> Callable[[np.ndarray], np.ndarray]:
    """The reference's pre-transform as a clean-fid `custom_image_tranform` (HWC uint8 in/out).

    Args:
        size: the short side after resizing and the side of the square crop (256).

    Returns:
        A function on HxWx3 uint8 arrays.
    """
    import torchvision.transforms as tv

    transform = tv.Compose(
        [tv.Resize(size, interpolation=tv.InterpolationMode.BILINEAR), tv.CenterCrop(size)]
    )

    def apply(image: np.ndarray) -> np.ndarray:
        return np.asarray(transform(Image.fromarray(image)))

    return apply


def image_dataset(files: list[str], protocol: Protocol) -> ResizeDataset:
    """clean-fid's dataset for a protocol: item i is the CHW float32 network input of file i.

    Args:
        files: image paths.
        protocol: the protocol.

    Returns:
        A `cleanfid.utils.ResizeDataset` configured like `compute_fid` would be.
    """
    dataset = ResizeDataset(files, mode=protocol.clean_fid_mode)
    dataset.fn_resize = build_resizer(protocol.clean_fid_mode)
    if protocol.pre_crop is not None:
        dataset.custom_image_tranform = resize_center_crop(protocol.pre_crop)
    return dataset


class TinyFeatureExtractor(torch.nn.Module):
    """A small deterministic stand-in for Inception (same input convention, D features).

    Input: float N x 3 x 299 x 299 in [0, 255]. It computes in float64 and one sample at a time,
    so a sample's features do not depend on its batch (bit-for-bit, whatever the batching).
    """

    def __init__(self, seed: int, num_features: int = TINY_DIM) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.num_features = num_features
        self.conv_weight = torch.nn.Parameter(torch.randn(8, 3, 5, 5, generator=gen) / 15.0)
        self.conv_bias = torch.nn.Parameter(torch.randn(8, generator=gen) * 0.1)
        self.proj = torch.nn.Parameter(torch.randn(8 * 16, num_features, generator=gen) / 11.0)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W in [0, 255] -> N x num_features float64."""
        return torch.cat([self._one(x[i : i + 1]) for i in range(x.shape[0])])

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.avg_pool2d(x.double() / 127.5 - 1.0, 4)
        h = torch.tanh(
            torch.nn.functional.conv2d(
                h, self.conv_weight.double(), self.conv_bias.double(), stride=2
            )
        )
        h = torch.nn.functional.adaptive_avg_pool2d(h, 4).flatten(1)
        return torch.tanh(h @ self.proj.double() * 3.0)


def tiny_feature_extractor(seed: int, num_features: int = TINY_DIM) -> TinyFeatureExtractor:
    """A tiny deterministic feature network for tests and benchmarks.

    Args:
        seed: weight seed; the same seed gives the same network everywhere.
        num_features: output dimension D.

    Returns:
        An eval-mode module mapping float N x 3 x 299 x 299 in [0, 255] to N x D features.
    """
    return TinyFeatureExtractor(seed, num_features).eval()


@dataclass
class FeatureExtractor:
    """A feature network with what a protocol card needs to know about it."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    dim: int
    name: str
    sha256: str | None

    def card(self) -> dict[str, Any]:
        """The extractor's part of a protocol card."""
        return {"name": self.name, "dim": self.dim, "sha256": self.sha256}


def build_extractor(
    spec: str, protocol: Protocol, weights: str | None = None, device: str = "cpu"
) -> FeatureExtractor:
    """Build the feature network named by `spec` for a protocol.

    Args:
        spec: `inception` (clean-fid's network for the protocol) or `tiny:SEED`.
        protocol: the protocol (`clean` uses the TorchScript Inception, the others pytorch-fid's).
        weights: a local Inception weights file; None: clean-fid's cache file
            (`default_inception_file`), which clean-fid downloads when missing; the eval drivers
            refuse to start without it (`require_inception_weights`).
        device: torch device string.

    Returns:
        The extractor.

    Raises:
        FeatureSetupError: an unknown spec, or a weights file of the wrong kind.
    """
    if spec.startswith(TINY_PREFIX):
        try:
            seed = int(spec[len(TINY_PREFIX) :])
        except ValueError:
            raise FeatureSetupError(f"bad extractor {spec!r}: expected tiny:<int seed>") from None
        return FeatureExtractor(tiny_feature_extractor(seed).to(device), TINY_DIM, spec, None)
    if spec != INCEPTION_EXTRACTOR:
        raise FeatureSetupError(f"unknown feature extractor {spec!r}; use inception or tiny:SEED")
    if protocol.clean_fid_mode == "clean":
        fn, used = _torchscript_inception(weights, device)
    else:
        fn, used = _fid_inception(weights, device)
    return FeatureExtractor(fn, INCEPTION_DIM, f"inception:{protocol.clean_fid_mode}", used)


def _torchscript_inception(weights: str | None, device: str) -> tuple[Callable, str | None]:
    from cleanfid.features import feature_extractor
    from cleanfid.inception_torchscript import InceptionV3W

    if weights is None:
        fn = feature_extractor(
            "torchscript_inception",
            torch.device(device),
            resize_inside=False,
            use_dataparallel=False,
        )
        return fn, _sha256_or_none(CLEAN_FID_CACHE / TORCHSCRIPT_NAME)
    with _named_copy(weights, TORCHSCRIPT_NAME) as folder:
        try:
            model = InceptionV3W(str(folder), download=False, resize_inside=False)
        except Exception as err:  # torch.jit raises several types for a non-TorchScript file
            raise FeatureSetupError(
                f"--inception-weights {weights}: protocol clean needs clean-fid's TorchScript "
                f"{TORCHSCRIPT_NAME}: {err}"
            ) from err
    model = model.to(device).eval()
    return model, sha256_file(weights)


def _fid_inception(weights: str | None, device: str) -> tuple[Callable, str | None]:
    from cleanfid.features import feature_extractor

    hub = contextlib.nullcontext() if weights is None else _torch_hub_with(weights)
    with hub:
        try:
            fn = feature_extractor(
                "pytorch_inception", torch.device(device), use_dataparallel=False
            )
        except Exception as err:  # a wrong file fails inside torch.load / load_state_dict
            if weights is None:
                raise
            raise FeatureSetupError(
                f"--inception-weights {weights}: protocols legacy_pytorch and dreamllm need "
                f"pytorch-fid's state dict {FID_INCEPTION_NAME}: {err}"
            ) from err
        return fn, _sha256_or_none(_hub_checkpoint())


@contextlib.contextmanager
def _named_copy(weights: str, name: str) -> Iterator[Path]:
    # clean-fid's loaders find weights by file name in a folder: link ours under that name.
    source = Path(weights).expanduser().resolve()
    if not source.is_file():
        raise FeatureSetupError(f"--inception-weights {weights}: no such file")
    with tempfile.TemporaryDirectory(prefix="dreamray-inception-") as tmp:
        (Path(tmp) / name).symlink_to(source)
        yield Path(tmp)


@contextlib.contextmanager
def _torch_hub_with(weights: str) -> Iterator[None]:
    # pytorch-fid's network loads through torch.hub's cache: point the cache at our file.
    previous = torch.hub.get_dir()
    with _named_copy(weights, FID_INCEPTION_NAME) as folder:
        checkpoints = folder / "hub" / "checkpoints"
        checkpoints.mkdir(parents=True)
        (checkpoints / FID_INCEPTION_NAME).symlink_to(folder / FID_INCEPTION_NAME)
        torch.hub.set_dir(str(folder / "hub"))
        try:
            yield
        finally:
            torch.hub.set_dir(previous)


def default_inception_file(protocol: Protocol) -> Path:
    """The file clean-fid loads the protocol's Inception from when no weights file is given."""
    if protocol.clean_fid_mode == "clean":
        return CLEAN_FID_CACHE / TORCHSCRIPT_NAME
    return _hub_checkpoint()


def inception_download_url(protocol: Protocol) -> str:
    """Where clean-fid would download the protocol's Inception from (a machine with internet)."""
    from cleanfid.downloads_helper import inception_url
    from cleanfid.inception_pytorch import FID_WEIGHTS_URL

    return inception_url if protocol.clean_fid_mode == "clean" else FID_WEIGHTS_URL


def download_inception(protocol: Protocol) -> Path:
    """Fetch the protocol's Inception file into `default_inception_file` (once, in the driver).

    Returns:
        The file.

    Raises:
        Whatever the download raises (no network, HTTP error).
    """
    if protocol.clean_fid_mode == "clean":
        from cleanfid.downloads_helper import check_download_url, inception_url

        return Path(check_download_url(local_folder=str(CLEAN_FID_CACHE), url=inception_url))
    from cleanfid.inception_pytorch import FID_WEIGHTS_URL

    torch.hub.load_state_dict_from_url(FID_WEIGHTS_URL, progress=True)
    return _hub_checkpoint()


def _hub_checkpoint() -> Path:
    # pytorch-fid's weights go through torch.hub's cache, under the file name of their URL.
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_INCEPTION_NAME


def _sha256_or_none(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None
