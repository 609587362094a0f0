"""The converters by command-line name: which reader, which sources, what inputs they take."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dreamray.data.convert import img2dataset, instruct_mmc4, journeydb, llava, mmc4


def _files_as_given(paths: list[Path]) -> list[Path]:
    return list(paths)


@dataclass(frozen=True)
class Converter:
    """One converter.

    Attributes:
        name: command-line name.
        sources: source names it may write (the first is the default).
        needs_images: whether `--images` is required.
        read_file: `(path, ctx) -> Iterator[Item]` over one input file.
        list_inputs: expands the `--input` arguments into input files.
        read_records: JSON-list sources only: `(records, offset, path, ctx) -> Iterator[Item]`,
            which lets one big `.json` file be split over several tasks.
    """

    name: str
    sources: tuple[str, ...]
    needs_images: bool
    read_file: Callable
    list_inputs: Callable[[list[Path]], list[Path]] = _files_as_given
    read_records: Callable | None = None


CONVERTERS: dict[str, Converter] = {
    "mmc4": Converter("mmc4", ("mmc4_core",), False, mmc4.read_file),
    "img2dataset": Converter(
        "img2dataset",
        ("laion400m", "blip_laion", "laion_coco"),
        False,
        img2dataset.read_file,
        img2dataset.list_inputs,
    ),
    "journeydb": Converter("journeydb", ("journeydb",), True, journeydb.read_file),
    "llava": Converter(
        "llava",
        ("llava_pretrain", "llava_instruct"),
        True,
        llava.READER.read_file,
        read_records=llava.READER.read_records,
    ),
    "instruct_mmc4": Converter(
        "instruct_mmc4",
        ("instruct_mmc4",),
        True,
        instruct_mmc4.READER.read_file,
        read_records=instruct_mmc4.READER.read_records,
    ),
}


def get_converter(name: str) -> Converter:
    """Look a converter up by name.

    Args:
        name: one of CONVERTERS.

    Returns:
        The converter.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in CONVERTERS:
        raise ValueError(f"unknown converter {name!r}; known: {sorted(CONVERTERS)}")
    return CONVERTERS[name]
