"""Shared fixtures: one local Ray cluster per test session, one tiny zoo per test session.

Tests are tiered by directory: tests/unit (no Ray), tests/ray (the shared local cluster),
tests/e2e (tiny recipe runs). The tier marker is added from the directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TIERS = ("unit", "ray", "e2e")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster started for this test session only (never a running `ray start`)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The tiny model zoo, built once per session."""
    from dreamray.zoo import build_tiny_zoo

    return build_tiny_zoo(tmp_path_factory.mktemp("zoo"), seed=0)
