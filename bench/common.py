"""Shared helpers of the bench/ scripts: machine description, the recipes they time, and docs/performance.md sections.

Every script rewrites only its own section of docs/performance.md, between

    <!-- bench:NAME -->
    ...
    <!-- /bench:NAME -->

so the scripts can be re-run independently and in any order.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
PERFORMANCE_MD = REPO / "docs" / "performance.md"
SHARED_GLUE = REPO.parent / "shared" / "glue"

from harness import store  # noqa: E402  (after the sys.path line above)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HEADER = """# Performance

Measured costs of the harness, written by the scripts in `bench/`: the GPU section by `bench/gpu_step.py` on a
CUDA machine, the others on a CPU machine (each section names its machine and command). Each script rewrites only
its own section below (between its `<!-- bench:NAME -->` markers), so they can be re-run independently:
`.venv/bin/python bench/<name>.py` (`--quick` is a smoke check that prints and writes nothing; `--no-docs`
prints only).
"""


def machine() -> list[str]:
    """The date, machine and package lines of a section, taken when the script starts (its load average then)."""
    import torch
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    versions = ", ".join(f"{k} {v}" for k, v in store.package_versions().items())
    return [f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
            f"- machine: {store.cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {gpu} "
            f"(load average at start {load})",
            f"- packages: Python {platform.python_version()}, {versions}"]


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    python = ".venv/bin/python" if "/.venv/" in sys.executable else "python"
    return " ".join([python, str(script), *sys.argv[1:]])


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


def section_header(title: str, machine_lines: list[str], doc: str = "") -> str:
    """The section's title, command and machine, then `doc` (the script's docstring) as its account of the method:
    its paragraphs after the summary line, usage lines (indented) left out, so the two cannot drift apart."""
    method = [p for p in doc.strip().split("\n\n")[1:] if not p.startswith("    ")]
    return "\n\n".join([f"## {title}", f"`{command_line()}`", "\n".join(machine_lines), *method]) + "\n"


def builtin_methods() -> list[str]:
    """The methods this repository ships that train (dense only evaluates), in registry order."""
    from harness.registry import all_methods
    return [name for name, m in all_methods().items()
            if name != "dense" and m.build.__module__.split(".")[0] in ("spd", "baselines")]


def recipe(name: str, pretrained, task, steps_per_epoch: int):
    """`name`'s recipe on a private copy of `pretrained`, built as the harness builds it (default settings, 90 %
    sparsity); 'teacher': the teacher's fine-tuning."""
    from harness import cost
    model = copy.deepcopy(pretrained)
    if name == "teacher":
        return cost.teacher_recipe(model, task, 4 * steps_per_epoch, 3e-5)
    return cost.build_recipe(name, {}, model, task, steps_per_epoch, 0.9, 42)


def glue_dir(quick: bool = False) -> str:
    """The real GLUE data: $GLUE_DIR, else ../shared/glue; --quick runs use the built-in samples."""
    if quick:
        return "samples"
    path = Path(os.environ.get("GLUE_DIR") or SHARED_GLUE)
    if not path.is_dir():
        raise SystemExit(f"real GLUE data not found at {path} (set GLUE_DIR to a glue_data directory)")
    return str(path)


def random_loaders(task, vocab_size: int, batch: int, seq: int, steps: int, eval_n: int = 8):
    """(make_train_loader(epoch), dev loader) over random token ids: `steps` batches of batch x seq, one of eval_n."""
    from harness import cost
    return cost.loaders(cost.random_examples([seq] * (batch * steps), task, vocab_size),
                        cost.random_examples([seq] * eval_n, task, vocab_size, seed=1), batch, eval_n)
