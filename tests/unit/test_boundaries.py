"""Pure modules import neither Ray nor DeepSpeed; `import platform` still means the stdlib."""

from __future__ import annotations

import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Every module of these packages, found on disk, so that a new module is checked without
# being listed here.
PURE_PACKAGES = ["dreamray.config", "dreamray.model", "dreamray.metrics"]
# Pure modules of packages that are not pure as a whole.
PURE_MODULES = ["dreamray.data.collate", "dreamray.contracts", "dreamray.files"]
# Unpickled by Ray Train's controller and dataset manager, Ray Data's split coordinator and
# every stage task, none of which runs torch: importing it there costs each seconds of CPU.
TORCH_FREE_MODULES = [
    "dreamray.data.records",
    "dreamray.data.pipeline",
    "dreamray.train.run",
    "dreamray.orchestration.launcher",
    "dreamray.orchestration.train_data",
    "dreamray.orchestration.rank_ingest",
    "dreamray.orchestration.runner",
]
RAY_OR_DEEPSPEED = ("ray", "deepspeed")
TORCH_STACK = ("torch", "transformers", "diffusers", "deepspeed")


def _package_modules(package: str) -> list[str]:
    """The package and all its modules and subpackages, read from disk (nothing imported)."""
    spec = importlib.util.find_spec(package)
    assert spec is not None, f"package {package} is missing"
    assert spec.submodule_search_locations is not None, f"{package} is not a package"
    found = [package]
    for info in pkgutil.iter_modules(spec.submodule_search_locations, prefix=f"{package}."):
        found += _package_modules(info.name) if info.ispkg else [info.name]
    return found


def _heavy_imports(modules: list[str], heavy: tuple[str, ...]) -> dict[str, list[str]]:
    """Import `modules` in order in a fresh interpreter: the heavy modules each one brought in.

    One interpreter for all (importing torch once per module would cost seconds each); the
    first module that brings a heavy one in is blamed, and a later one that would also bring it
    in is found once the first is fixed.
    """
    code = (
        "import importlib, json, sys\n"
        "out, seen = {}, set()\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        f"    now = {{m for m in {heavy!r} if m in sys.modules}}\n"
        "    out[module], seen = sorted(now - seen), seen | now\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # a missing module fails here, it is not skipped
    return json.loads(out.stdout)


def _offenders(modules: list[str], heavy: tuple[str, ...]) -> dict[str, list[str]]:
    return {m: found for m, found in _heavy_imports(modules, heavy).items() if found}


def test_pure_packages_are_walked_from_disk():
    modules = _package_modules("dreamray.model")
    assert {"dreamray.model", "dreamray.model.dreamllm", "dreamray.model.memory"} <= set(modules)
    assert {"dreamray.config.specs", "dreamray.metrics.fid"} <= {
        m for p in PURE_PACKAGES for m in _package_modules(p)
    }


def test_pure_modules_do_not_import_ray_or_deepspeed():
    modules = [m for p in PURE_PACKAGES for m in _package_modules(p)] + PURE_MODULES
    assert _offenders(modules, RAY_OR_DEEPSPEED) == {}


def test_modules_that_ray_helpers_unpickle_do_not_import_torch():
    assert _offenders(TORCH_FREE_MODULES, TORCH_STACK) == {}


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
