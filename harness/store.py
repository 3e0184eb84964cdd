"""Writing results: atomic files and directories, and the manifest that says how a result was made.

A run directory is complete exactly when it has `metrics.json`; it is written into a temporary sibling and
renamed into place, so an interrupted run never leaves a directory that looks finished.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

TRACKED_PACKAGES = ("spd-bench", "torch", "transformers", "datasets", "tokenizers", "safetensors",
                    "scikit-learn", "scipy", "numpy")


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON atomically (see write_text)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file atomically: a temp file in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike):
    with open(path) as f:
        return json.load(f)


@contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a temporary directory; on success it replaces `final` in one rename, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".partial"))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def git_sha() -> str | None:
    """The source's commit: from the checkout, or SPD_BENCH_GIT_SHA (set in the Docker image, which has no .git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("SPD_BENCH_GIT_SHA") or None


def git_dirty(cwd: Path | None = None) -> bool | None:
    """Whether tracked files differ from that commit (a result from an edited config or source is not the
    commit's result); None where it cannot be known (no git, or the Docker image, which has no .git)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                             cwd=cwd or Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    found = {}
    for name in TRACKED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")


def manifest(device: torch.device, seed: int, started: float, finished: float, **extra) -> dict:
    return {"git_sha": git_sha(), "git_dirty": git_dirty(), "started_at": _iso(started),
            "finished_at": _iso(finished), "packages": package_versions(), "python": platform.python_version(),
            "host": socket.gethostname(), "device": device_description(device), "seed": seed,
            "started": started, "finished": finished, "seconds": round(finished - started, 3), **extra}
