"""The mirror's cache of downloaded model versions: complete, verified entries only, each with its
sha256 sums, and the check that a version is one the server can load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("serving.mirror")

CHECKSUMS = "checksums.json"
PARTIAL = ".partial-"  # a download in progress: .partial-<pid>-<version>-<random>


def find_onnx(folder: Path) -> Path:
    """The ONNX file inside a downloaded model folder (mlflow's onnx flavor writes model.onnx)."""
    candidates = sorted(folder.rglob("*.onnx"), key=lambda p: (len(p.parts), p.name != "model.onnx", str(p)))
    if not candidates:
        raise FileNotFoundError(f"no .onnx file under {folder}")
    return candidates[0]


class VerificationError(Exception):
    """A downloaded version that must not serve; `kind` is the swap-failure metric's reason."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def verify(folder: Path) -> Path:
    """The folder's ONNX file, once onnxruntime loads it and its signature is one we can serve."""
    from serving.sessions import create_session, serving_options
    from serving.signature import signature_from_session

    try:
        onnx = find_onnx(folder)
    except FileNotFoundError as exc:
        raise VerificationError("load_error", f"the version has no ONNX file: {exc}") from exc
    try:
        session = create_session(onnx, serving_options(onnx, intra_op_threads=1))
    except Exception as exc:
        raise VerificationError("load_error", f"cannot load the ONNX file: {exc}") from exc
    try:
        signature_from_session(session)
    except ValueError as exc:
        raise VerificationError("unsupported_signature", str(exc)) from exc
    return onnx


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_checksums(folder: Path) -> None:
    sums = {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1))


def checksums_match(folder: Path) -> bool:
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
        return bool(sums) and all(_sha256(folder / name) == digest for name, digest in sums.items())
    except (OSError, ValueError):
        return False


class VersionCache:
    """`root/<model>/<version>/`: complete, verified downloads only, each with its sha256 sums.

    A download goes to a partial folder beside the entry (same filesystem) and is renamed into
    place once verified, so a crash mid-download never leaves a half entry where one is read.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def get(self, name: str, version: str, download) -> Path:
        """The verified ONNX file of a version, downloading it with `download(folder)` if needed."""
        final = self.root / name / version
        if final.exists():
            if checksums_match(final):
                return find_onnx(final)
            log.warning("cache entry altered or incomplete; downloading it again", extra={"path": str(final)})
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{PARTIAL}{os.getpid()}-{version}-", dir=final.parent))
        try:
            download(partial)
            verify(partial)
            _write_checksums(partial)
            try:
                os.rename(partial, final)
            except OSError:
                if not checksums_match(final):
                    raise
                # Another mirror on this cache renamed a complete entry first: use that one.
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return find_onnx(final)

    def remove_abandoned(self, name: str) -> None:
        """Delete the partial downloads of processes that died mid-download."""
        for partial in (self.root / name).glob(PARTIAL + "*"):
            pid = int(partial.name[len(PARTIAL) :].split("-", 1)[0])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                shutil.rmtree(partial, ignore_errors=True)
            except PermissionError:
                pass  # alive, another user's
