"""Pure modules import neither Ray nor DeepSpeed; `import platform` still means the stdlib."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PURE_MODULES = [
    "dreamray.config",
    "dreamray.model",
    "dreamray.model.tokens",
    "dreamray.model.groups",
    "dreamray.metrics",
    "dreamray.data.collate",
]


def _imported_heavy_modules(module: str) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(','.join(m for m in ('ray', 'deepspeed') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_pure_modules_do_not_import_ray_or_deepspeed():
    import importlib.util

    checked = []
    for module in PURE_MODULES:
        try:
            if importlib.util.find_spec(module) is None:
                continue  # a module not written yet
        except ModuleNotFoundError:
            continue
        assert _imported_heavy_modules(module) == [], module
        checked.append(module)
    assert "dreamray.config" in checked and "dreamray.model" in checked


def test_stdlib_platform_is_not_shadowed_from_repo_root():
    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system())"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "Linux"
    assert not (REPO / "platform" / "__init__.py").exists()
