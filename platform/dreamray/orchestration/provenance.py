"""Which code made a record: the git commit of the dreamray checkout, when there is one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import dreamray

COMMIT_ENV = "DREAMRAY_GIT_COMMIT"  # set by deployments whose code is not a git checkout


def git_commit() -> str | None:
    """The commit of the checkout dreamray is imported from, `+dirty` if it has changes.

    Returns:
        The commit hash (from `DREAMRAY_GIT_COMMIT` if set), or None outside a checkout.
    """
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    package_dir = Path(dreamray.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(package_dir), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(package_dir), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
