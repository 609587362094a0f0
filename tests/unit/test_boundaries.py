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
# Unpickled by Ray Train's controller and dataset manager, Ray Data's split coordinator and
# every stage task, none of which runs torch: importing it there costs each ~2 s of CPU.
TORCH_FREE_MODULES = [
    "dreamray.data.records",
    "dreamray.data.pipeline",
    "dreamray.train.run",
    "dreamray.orchestration.launcher",
    "dreamray.orchestration.train_data",
    "dreamray.orchestration.rank_ingest",
    "dreamray.orchestration.runner",
]


def _imported_heavy_modules(module: str, heavy=("ray", "deepspeed")) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))\n"
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


def test_modules_that_ray_helpers_unpickle_do_not_import_torch():
    for module in TORCH_FREE_MODULES:
        heavy = ("torch", "transformers", "diffusers", "deepspeed")
        assert _imported_heavy_modules(module, heavy) == [], module


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
