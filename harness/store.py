"""Writing results: atomic files and directories, their completion records, and the manifest.

Every directory spd-bench writes as a whole (a run, a cached teacher) is made by `atomic_dir`: written
into a hidden `.NAME.*.partial` sibling that holds the marker file `.spd-bench` from its first moment,
closed with the completion record `complete.json` (size and sha256 of every other file in it), and only
then renamed into place. So a directory without a valid record was never finished, the marker says which
directories spd-bench may clean up, and a file damaged afterwards (a truncated copy, a half-written
restore) shows as a size or checksum that no longer matches.

Verification cost: sizes of every file are always checked; checksums of files up to CHECKSUM_LIMIT (all
JSON, predictions, history, tokenizer files) too. Model weights are larger: their size catches truncation,
and a full checksum is made where asked (`spd-bench status --verify`), since hashing 400 MB per cell on
every `status` would make it slow.

Files get the conventional permissions: 0666 and directories 0777, less the umask (0644/0755 under 022),
like any file the user creates; tempfile's private 0600/0700 would leave results unreadable to a group.
"""
from __future__ import annotations

import datetime
import hashlib
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

from harness.errors import UserError

TRACKED_PACKAGES = ("spd-bench", "torch", "transformers", "datasets", "tokenizers", "safetensors",
                    "scikit-learn", "scipy", "numpy")


MARKER = ".spd-bench"          # in every directory atomic_dir makes, from its first moment
RECORD = "complete.json"       # written last: what the directory holds, file by file
RECORD_FORMAT = 1
CHECKSUM_LIMIT = 64 << 20      # files up to this size are hashed at every check, larger ones on request


def umask() -> int:
    """The process's umask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data) -> None:
    """Write JSON atomically (see write_text)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file atomically: a temp file in the same directory, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())   # mkstemp's 0600 is for secrets; results are ordinary files
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


def make_private_dir(parent: Path, name: str) -> Path:
    """A new hidden `.NAME.*.partial` directory in `parent`, with the usual permissions, marked as ours."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".partial"))
    os.chmod(tmp, 0o777 & ~umask())
    write_json(tmp / MARKER, {"created_by": "spd-bench", "format": RECORD_FORMAT})
    return tmp


def file_sha256(path: Path) -> str:
    """A file's sha256, read in 1 MiB blocks (weights files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[str]:
    """Every file under `root`, as sorted relative posix paths (the record itself left out)."""
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != RECORD:
                found.append(rel)
    return sorted(found)


def _conventional_modes(root: Path) -> None:
    """Files 0666 and directories 0777 less the umask, whatever wrote them (safetensors saves 0600)."""
    mask = umask()
    for dirpath, _, names in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in names:
            os.chmod(Path(dirpath) / name, 0o666 & ~mask)


def write_record(root: Path) -> None:
    """The completion record of a finished directory: every file's size and sha256."""
    files = {rel: {"size": (root / rel).stat().st_size, "sha256": file_sha256(root / rel)} for rel in _files(root)}
    write_json(root / RECORD, {"format": RECORD_FORMAT, "files": files})


def read_record(root: Path) -> dict | None:
    """The files a directory's completion record lists, or None if it has no readable record."""
    try:
        record = read_json(Path(root) / RECORD)
        files = record["files"]
        if record.get("format") != RECORD_FORMAT or not isinstance(files, dict) or not all(
                isinstance(m, dict) and isinstance(m.get("size"), int) and isinstance(m.get("sha256"), str)
                for m in files.values()):
            return None
        return files
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check_record(root: Path, full: bool = False) -> str | None:
    """None when every file the record lists is there with its size (and checksum: always for small files,
    for all with full=True); otherwise what is wrong, in a few words."""
    root = Path(root)
    files = read_record(root)
    if files is None:
        return f"no valid {RECORD}"
    for rel, meta in files.items():
        path = root / rel
        try:
            size = path.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != meta["size"]:
            return f"{rel} has {size} bytes, {meta['size']} were written"
        if (full or size <= CHECKSUM_LIMIT) and file_sha256(path) != meta["sha256"]:
            return f"{rel} differs from what was written (sha256)"
    return None


def _legacy_problem(root: Path) -> str | None:
    """For a run directory written before completion records existed: every JSON file parses, every JSON
    line parses, and every safetensors file is as long as its header says. Cheap, and it catches a
    half-written file; None when nothing is wrong."""
    for rel in _files(root):
        path = root / rel
        try:
            if rel.endswith(".json"):
                read_json(path)
            elif rel.endswith(".jsonl"):
                with open(path) as f:
                    for line in f:
                        if line.strip():
                            json.loads(line)
            elif rel.endswith(".safetensors"):
                with open(path, "rb") as f:
                    n = int.from_bytes(f.read(8), "little")
                    header = json.loads(f.read(n))
                ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
                if path.stat().st_size != 8 + n + max(ends, default=0):
                    return f"{rel} is truncated"
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return f"{rel} is damaged"
    return None


def completion_problem(root: Path, full: bool = False) -> str | None:
    """Why `root` is not a finished directory of spd-bench's, or None if it is: the record verifies, or (a
    directory from before records, without our marker) its files pass the legacy checks."""
    root = Path(root)
    if (root / RECORD).exists() or (root / MARKER).exists():
        return check_record(root, full)
    return _legacy_problem(root)


def foreign_entries(root: Path) -> list[str] | None:
    """Entries of `root` that spd-bench did not write (its record does not list them), [] if none; None when
    `root` has no readable completion record, so what it holds is unknown."""
    files = read_record(root)
    if files is None or not (Path(root) / MARKER).is_file():
        return None
    ours = set(files) | {RECORD}
    ours_dirs = {p.as_posix() for rel in ours for p in Path(rel).parents} - {"."}
    foreign = []
    for dirpath, dirnames, names in os.walk(root):
        for name in dirnames + names:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in ours and rel not in ours_dirs:
                foreign.append(rel)
        dirnames[:] = [d for d in dirnames if (Path(dirpath) / d).relative_to(root).as_posix() in ours_dirs]
    return sorted(foreign)


def is_ours(path: Path) -> bool:
    """A directory spd-bench made (it carries our marker), finished or not."""
    return Path(path).is_dir() and not Path(path).is_symlink() and (Path(path) / MARKER).is_file()


@contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a new private directory; on success it gets its completion record and takes `final`'s place in
    one rename, on error it is removed. `final` is replaced only if it is an empty directory or a directory
    of ours that holds nothing we did not write (harness.run.claim_out_dir refuses the rest before a run
    starts; this re-checks at the end, and keeps the result rather than remove something else)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_private_dir(final.parent, final.name)
    try:
        yield tmp
        _conventional_modes(tmp)
        write_record(tmp)
        if final.is_dir() and not final.is_symlink() and not any(final.iterdir()):
            final.rmdir()
        if final.exists() or final.is_symlink():
            if foreign_entries(final) != [] or final.is_symlink():
                kept = tmp.with_name(tmp.name[:-len(".partial")] + ".kept")   # not a leftover to clean up
                os.replace(tmp, kept)
                raise UserError(f"{final} appeared during the run and holds files spd-bench did not write; "
                                f"nothing was removed, the finished result is in {kept}")
            aside = make_private_dir(final.parent, final.name + ".replaced")
            os.replace(final, aside / "old")
            os.replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
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


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo); platform.processor() is empty or just the architecture on Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} threads"


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")


def manifest(device: torch.device, seed: int, started: float, finished: float, **extra) -> dict:
    return {"git_sha": git_sha(), "git_dirty": git_dirty(), "started_at": _iso(started),
            "finished_at": _iso(finished), "packages": package_versions(), "python": platform.python_version(),
            "host": socket.gethostname(), "device": device_description(device), "seed": seed,
            "started": started, "finished": finished, "seconds": round(finished - started, 3), **extra}
