"""What ties a model to its exact code and data: the git commit and a content hash of the rows."""

import hashlib
import os
import subprocess
from pathlib import Path

import pandas as pd


def git_commit() -> str:
    """HEAD of the checkout this code runs from, '+dirty' when it has uncommitted changes.

    Images built without .git pass the commit in GIT_COMMIT at build time.
    """
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def data_hash(frame: pd.DataFrame) -> str:
    """sha256 of the rows and column names, independent of how the frame was stored."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()
