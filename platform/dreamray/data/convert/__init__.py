"""Converters from the original dataset formats to the unified shard schema.

Public API:
- `run_conversion(ConvertRequest) -> manifest` (Ray fan-out or in process), `ensure_ray`;
- `convert_unit(WorkUnit, ...)`: one file (or JSON slice) in process, no Ray;
- `CONVERTERS` / `get_converter`: per-source readers `read_file(path, ReadContext)`;
- command line: `python -m dreamray.data.convert <mmc4|img2dataset|journeydb|llava|instruct_mmc4>`.
"""

from dreamray.data.convert.base import DroppedImage, ReadContext, Reject
from dreamray.data.convert.registry import CONVERTERS, Converter, get_converter
from dreamray.data.convert.runner import (
    BadInputError,
    ConvertRequest,
    convert_and_report,
    ensure_ray,
    run_conversion,
)
from dreamray.data.convert.writer import ShardOptions, UnitResult, WorkUnit, convert_unit

__all__ = [
    "CONVERTERS",
    "BadInputError",
    "ConvertRequest",
    "Converter",
    "DroppedImage",
    "ReadContext",
    "Reject",
    "ShardOptions",
    "UnitResult",
    "WorkUnit",
    "convert_and_report",
    "convert_unit",
    "ensure_ray",
    "get_converter",
    "run_conversion",
]
