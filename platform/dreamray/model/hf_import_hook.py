"""Register ``dreamllm`` with transformers' auto classes as soon as they exist, without importing
them: `install()` runs when ``dreamray`` is imported.

Importing transformers' config classes imports torch (~4 s of CPU), and ``dreamray`` is imported
by processes that must stay torch-free (Ray's controllers and data coordinators unpickle
launcher and pipeline code). So `install` registers at once only where transformers' auto
modules are already loaded; elsewhere it puts a finder on ``sys.meta_path`` that runs the
registration right after ``configuration_auto`` / ``modeling_auto`` finish executing, whoever
imports them and whenever. Standard library only.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

CONFIGURATION_AUTO = "transformers.models.auto.configuration_auto"
MODELING_AUTO = "transformers.models.auto.modeling_auto"


def _register_config(module: ModuleType) -> None:
    from dreamray.model.hf_registration import register_config

    register_config(module)


def _register_model(module: ModuleType) -> None:
    from dreamray.model.hf_registration import register_model

    register_model(module)


_AFTER_IMPORT: dict[str, Callable[[ModuleType], None]] = {
    CONFIGURATION_AUTO: _register_config,
    MODELING_AUTO: _register_model,
}


class _ThenRegister(importlib.abc.Loader):
    """Delegates to the real loader, then calls the registration on the executed module."""

    def __init__(self, loader: Any, after: Callable[[ModuleType], None]) -> None:
        self._loader, self._after = loader, after

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._after(module)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ...: the real loader's
        return getattr(self._loader, name)


class AutoRegistrationFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader the other finders give the two auto modules."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        """The other finders' spec for `fullname`, its loader wrapped for the two auto modules."""
        if fullname not in _AFTER_IMPORT:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenRegister(spec.loader, _AFTER_IMPORT[fullname])
                return spec
        return None


def install() -> None:
    """Register now what is already imported, and hook what is not (idempotent)."""
    for name, register in _AFTER_IMPORT.items():
        if name in sys.modules:
            register(sys.modules[name])
    if not all(name in sys.modules for name in _AFTER_IMPORT) and not any(
        isinstance(finder, AutoRegistrationFinder) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, AutoRegistrationFinder())
