"""Epoch cost with dynamic padding (harness.data.make_loader's default) against padding every example to 128
tokens (make_loader(..., pad_to=128): the official code's --pad_to_max_length), on the real CoLA, STS-B, MRPC and
RTE train sets (--tasks to choose).

For each task both loaders are built with the same shuffle seed, so batch i holds the same examples in both and
differs only in padding. Tokens per epoch are counted exactly over the whole epoch (padding included: what the model
computes on). Timed: the forward + backward of the model (train mode, loss from the labels) on the first --batches
batches of the epoch, the two loaders interleaved batch by batch. The columns marked * extrapolate to the full
epoch: padded batches all have one shape (median seconds per batch x batches per epoch); dynamic batches by tokens
(seconds per padded token of the timed batches x tokens per epoch; attention's cost is quadratic in the length, so
this slightly overstates long batches and understates short ones). The last column is the ratio over the timed
batches themselves, no extrapolation. The optimizer step (clip + AdamW) is left out: it costs the same per step
whatever the padding (the step_cost section has its size), and both epochs have the same number of steps.

    .venv/bin/python bench/padding.py [--quick] [--batches N]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_parser, glue_dir, machine, section_header, publish  # noqa: E402

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from harness import data, models  # noqa: E402
from harness.run import default_cache_dir  # noqa: E402
from harness.tasks import get_task  # noqa: E402

SEQ = 128
BATCH = 32


def epoch_tokens(loader) -> tuple[int, int, int]:
    """(padded tokens, real tokens, batches) of one pass over `loader`."""
    padded = real = batches = 0
    for b in loader:
        padded += b["input_ids"].numel()
        real += int(b["attention_mask"].sum())
        batches += 1
    return padded, real, batches


def fwd_bwd(model, batch) -> float:
    t0 = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def measure(task_name: str, model_name: str, n_batches: int, source: str, tokenizer) -> dict:
    task = get_task(task_name)
    raw = data.load_split(task, "train", source)
    tok = data.tokenize(raw, tokenizer, SEQ, default_cache_dir() / "tokenized")
    dynamic = lambda: data.make_loader(tok, tokenizer, BATCH, shuffle=True, seed=0)  # noqa: E731
    padded = lambda: data.make_loader(tok, tokenizer, BATCH, shuffle=True, seed=0, pad_to=SEQ)  # noqa: E731
    dyn_tokens, real_tokens, batches = epoch_tokens(dynamic())
    pad_tokens, _, _ = epoch_tokens(padded())

    model = models.load_pretrained(model_name, task, 42).train()
    warm = next(iter(padded()))
    fwd_bwd(model, warm)                       # first call allocates; not timed
    times = {"dynamic": [], "padded": []}
    tokens = {"dynamic": [], "padded": []}
    for i, (bd, bp) in enumerate(zip(dynamic(), padded())):
        if i >= n_batches:
            break
        pairs = [("dynamic", bd), ("padded", bp)]
        if i % 2:
            pairs.reverse()
        for name, b in pairs:
            times[name].append(fwd_bwd(model, b))
            tokens[name].append(b["input_ids"].numel())
        print(f"  {task_name} batch {i + 1}/{n_batches}: dynamic {bd['input_ids'].shape[1]:3d} tokens "
              f"{times['dynamic'][-1]:.2f}s, padded {times['padded'][-1]:.2f}s", flush=True)
    per_token_dyn = sum(times["dynamic"]) / sum(tokens["dynamic"])
    epoch_dyn = per_token_dyn * dyn_tokens
    epoch_pad = median(times["padded"]) * batches
    return {"task": task_name, "examples": len(tok), "batches": batches, "real": real_tokens,
            "dyn_tokens": dyn_tokens, "pad_tokens": pad_tokens, "measured": len(times["padded"]),
            "mean_len_dyn": dyn_tokens / len(tok), "dyn_batch_s": median(times["dynamic"]),
            "pad_batch_s": median(times["padded"]), "epoch_dyn": epoch_dyn, "epoch_pad": epoch_pad,
            # the same ratio from the measured batches only, no extrapolation
            "measured_ratio": sum(times["padded"]) / sum(times["dynamic"])}


def main(argv=None) -> int:
    ap = bench_parser(__doc__, quick="tiny model, built-in RTE samples, 1 batch, no docs update")
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--tasks", default="cola,stsb,mrpc,rte")
    ap.add_argument("--batches", type=int, default=30, help="batches timed per task and variant (default 30)")
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.tasks, args.batches = "tiny", "rte", 1
    m = machine()
    source = data.resolve_source(glue_dir(args.quick))
    tokenizer = models.load_tokenizer(args.model)
    results = [measure(t, args.model, args.batches, source, tokenizer) for t in args.tasks.split(",")]

    rows = []
    for r in results:
        rows.append([r["task"].upper(), r["examples"], r["batches"], f"{r['real'] / r['examples']:.1f}",
                     f"{r['dyn_tokens'] / 1e3:.0f}k", f"{r['pad_tokens'] / 1e3:.0f}k",
                     f"{r['pad_tokens'] / r['dyn_tokens']:.2f}x",
                     f"{r['dyn_batch_s']:.2f}", f"{r['pad_batch_s']:.2f}",
                     f"{r['epoch_dyn'] / 60:.1f}", f"{r['epoch_pad'] / 60:.1f}",
                     f"{r['epoch_pad'] / r['epoch_dyn']:.2f}x", f"{r['measured_ratio']:.2f}x"])
    headers = ["task", "train ex.", "batches/epoch", "real tok/ex.", "tokens/epoch dynamic",
               "tokens/epoch pad-128", "token ratio", "s/batch dynamic (median)", "s/batch pad-128 (median)",
               "epoch min dynamic*", "epoch min pad-128*", "epoch ratio*", f"ratio on the {args.batches} timed batches"]
    table = tabulate(rows, headers=headers, tablefmt="github")
    print(table)
    body = "\n".join([
        section_header("Dynamic padding vs padding to 128 tokens (CPU)", m, __doc__),
        f"`{args.model}`, batch {BATCH}, max_seq_length {SEQ}, the train sets from `{source}`.",
        "",
        table,
    ])
    publish("padding", body, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
