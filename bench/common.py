"""Shared helpers of the bench/ scripts: machine description, interleaved timing, and docs/performance.md sections.

Every script rewrites only its own section of docs/performance.md, between

    <!-- bench:NAME -->
    ...
    <!-- /bench:NAME -->

so the scripts can be re-run independently and in any order.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
PERFORMANCE_MD = REPO / "docs" / "performance.md"
SHARED_GLUE = REPO.parent / "shared" / "glue"
PACKAGES = ("torch", "transformers", "datasets", "tokenizers", "numpy")

from harness import store  # noqa: E402  (after the sys.path line above)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HEADER = """# Performance

Measured costs of the harness on a CPU machine, written by the scripts in `bench/`. Each script rewrites only
its own section below (between its `<!-- bench:NAME -->` markers), so they can be re-run independently:
`.venv/bin/python bench/<name>.py` (`--quick` is a smoke check that prints and writes nothing; `--no-docs`
prints only).

Every comparison is measured inside ONE process with the variants interleaved (A, B, B, A, ...), and the
tables report medians and ratios of medians: on a shared machine ratios are what to read.
"""


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine() -> dict:
    import torch
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "-"
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "versions": versions, "load": load_average()}


def machine_lines(m: dict | None = None) -> list[str]:
    m = m or machine()
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return [f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
            f"- machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, no GPU "
            f"(load average at start {m['load']})",
            f"- packages: Python {m['python']}, {versions}"]


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", str(script), *sys.argv[1:]])


def update_section(name: str, body: str, path: Path = PERFORMANCE_MD) -> None:
    """Replace the text between this script's markers (appending the section if it is not there yet)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    store.write_text(path, text)


def bench_parser(doc: str, quick: str | None = None, batch_shape: bool = False) -> argparse.ArgumentParser:
    """The options every bench script shares: --no-docs, --quick (when the script has a smoke mode: `quick`
    says what it does) and, with batch_shape, the model/task/batch/sequence of the measured step."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if batch_shape:
        ap.add_argument("--model", default="minilm")
        ap.add_argument("--task", default="rte")
        ap.add_argument("--batch", type=int, default=32)
        ap.add_argument("--seq", type=int, default=128)
    if quick:
        ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--no-docs", action="store_true", help="print only; leave docs/performance.md alone")
    return ap


def publish(name: str, body: str, args) -> None:
    """Write the section to docs/performance.md unless the run was --quick or --no-docs."""
    if getattr(args, "quick", False) or args.no_docs:
        return
    update_section(name, body)
    print(f"\nwrote docs/performance.md (section {name})")


def section_header(title: str, m: dict | None = None) -> str:
    return "\n".join([f"## {title}", "", f"`{command_line()}`", "", *machine_lines(m), ""])


def interleave(variants: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
               sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Seconds of each call, the variants alternating (A B A B ...) so background load hits them alike."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times = {name: [] for name in variants}
    for i in range(reps):
        order = list(variants.items())
        if i % 2:        # A B, B A, A B, ...: neither variant always runs right after the other
            order.reverse()
        for name, fn in order:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs) -> float:
    return statistics.median(xs)


def spread(xs) -> str:
    """min-max of a list of seconds, as text."""
    return f"{min(xs):.3f}-{max(xs):.3f}"


def glue_dir() -> Path:
    if not SHARED_GLUE.is_dir():
        raise SystemExit(f"real GLUE data not found at {SHARED_GLUE}")
    return SHARED_GLUE
