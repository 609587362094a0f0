"""The table of `gpu_check.py`: rows with a value, a target and a status, printed as markdown and
written as JSON after every part (a run killed half way still leaves what it measured)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

JSON_NAME = "gpu_check.json"
PASS, FAIL, INFO, ERROR, SKIPPED = "pass", "fail", "info", "error", "skipped"
NOTE_CHARS = 300  # an error's message is cut here: the table stays readable


@dataclass
class Row:
    """One measured value of the check."""

    part: str
    check: str
    value: float | None
    unit: str
    target: str = "-"
    status: str = INFO
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def shown_value(self) -> str:
        """The value as the table prints it."""
        if self.value is None:
            return "-"
        size = abs(self.value)
        if size < 100:
            return f"{self.value:.3g}"
        return f"{self.value:,.0f}" if size < 1e6 else f"{self.value:.3e}"


def judged(passed: bool, applies: bool) -> str:
    """`pass` / `fail` where the target applies, else `info`."""
    if not applies:
        return INFO
    return PASS if passed else FAIL


def error_note(err: BaseException) -> str:
    """One line naming the error, cut to `NOTE_CHARS`."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text[:NOTE_CHARS]


class Report:
    """The rows gathered so far, the device and the run's settings."""

    def __init__(self, device: str, mode: str, settings: dict[str, Any],
                 json_path: Path | None) -> None:
        """Start an empty report.

        Args:
            device: the device's name, as printed above the table.
            mode: ``full`` or ``tiny``.
            settings: the run's settings (recorded in the JSON).
            json_path: where to write the JSON after every part; None: nowhere.
        """
        self.device, self.mode, self.settings = device, mode, settings
        self.json_path = json_path
        self.rows: list[Row] = []
        self.part_seconds: dict[str, float] = {}
        self.started = time.perf_counter()
        self.ratio: float | None = None

    def add(self, rows: list[Row]) -> None:
        """Append rows of a part."""
        self.rows.extend(rows)

    def elapsed(self) -> float:
        """Seconds since the report started."""
        return time.perf_counter() - self.started

    def to_json(self) -> dict[str, Any]:
        """Everything in the table, plus per-part seconds and the settings."""
        return {
            "device": self.device,
            "mode": self.mode,
            "ratio": self.ratio,
            "elapsed_s": round(self.elapsed(), 2),
            "part_seconds": self.part_seconds,
            "settings": self.settings,
            "rows": [asdict(r) for r in self.rows],
        }

    def write_json(self) -> None:
        """Write `to_json` to `json_path` (atomically: a reader never sees half a file)."""
        if self.json_path is None:
            return
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, default=str))
        os.replace(tmp, self.json_path)

    def print_table(self) -> None:
        """The markdown table, then ``ratio: <dag ratio>`` as the last line."""
        print(f"\ngpu check ({self.mode} mode) on {self.device}, "
              f"{self.elapsed():.0f} s in all")
        print("| part | check | value | unit | target | result | note |")
        print("|---|---|---|---|---|---|---|")
        for r in self.rows:
            note = r.note.replace("|", "/")
            print(f"| {r.part} | {r.check} | {r.shown_value()} | {r.unit} | {r.target} | "
                  f"{r.status} | {note} |")
        print(f"ratio: {'n/a' if self.ratio is None else f'{self.ratio:.2f}'}")


def json_path_from_env(explicit: str | None) -> Path | None:
    """`explicit`, else ``$OUT/gpu_check.json`` when ``OUT`` is set (the device machine brings
    back what is under ``$OUT``), else None."""
    if explicit:
        return Path(explicit)
    out = os.environ.get("OUT")
    return Path(out) / JSON_NAME if out else None
