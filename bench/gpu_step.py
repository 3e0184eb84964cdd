"""GPU step cost: every built-in method's training step through the real loop, against the floor of the same model.

Models: BERT-base geometry (random init from bert-base-uncased's config: nothing to download) or `--model minilm`
(the offline package). Batches: 32 x 128 random tokens, and the real train set at its own lengths (dynamic
padding; RTE for BERT-base, MRPC for MiniLM; `$GLUE_DIR`, else ../shared/glue). Each recipe is built as the harness
builds it (bench.common.recipe: the task's stage lengths; `teacher`: the teacher's fine-tuning) and each of its
phases runs --warmup + --steps steps of harness.train.train (harness.cost.probe_phases: the phase's own grafting
probabilities, pruning events left out; precision auto: bf16 autocast + TF32 on CUDA): ms/step from
`Hooks.on_step` timestamps, the GPU synchronised only at the window's edges, so the loop runs as in a cell.

The floor (`vs floor`: against the fastest one, on the same batches): a plain forward + backward + fused AdamW step
of the dense model with the fastest settings found (sdpa, bf16 autocast, TF32, set_to_none; --compile adds
torch.compile), on the batches already on the GPU. FLOPs per step: harness/cost.py's model (embeddings, softmax and
element-wise ops not counted), with the layers each step's grafting draw actually ran and the teacher's forward for
KD; TFLOP/s against the card's dense bf16 peak. Peak memory: torch.cuda.max_memory_allocated over the timed steps.
One step of SPD's pruning phase is profiled with torch.profiler: top kernels by GPU time, top host ops, GPU idle
time per step.

    source .gpu-bundle/env.sh && python bench/gpu_step.py [--model minilm] [--compile]
    .venv/bin/python bench/gpu_step.py --quick     # smoke: tiny model, on the CPU where there is no GPU
"""
from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (bench_parser, builtin_methods, glue_dir, machine, publish, random_loaders,  # noqa: E402
                          recipe, section_header)

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from harness import cost, data, models  # noqa: E402
from harness.tasks import get_task  # noqa: E402
from harness.train import Hooks, autocast, set_attention, to_device  # noqa: E402

# Dense bf16 tensor-core peaks (vendor datasheets), TFLOP/s, by the first name that torch's device name contains.
BF16_PEAK = [("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("A100", 312)]
TARGETS = {"spd": 15.0, "sparse-ft": 10.0}   # issue 11: ms/step at BERT-base 32 x 128 on one H100
FLOOR_RATIO = 1.6


def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK if key in name), None)


def step_flops(cfg, watch: cost.Stopwatch, needs_teacher: bool) -> float:
    """Mean FLOPs per timed step: each step at its own batch shape and the layers its draw ran."""
    flops = [cost.step_flops_per_token(cfg, layers, seq, needs_teacher) * batch * seq
             for layers, (batch, seq) in zip(watch.layers, watch.window_shapes())]
    return sum(flops) / len(flops)


def floor(pretrained, batches: list[dict], device, warmup: int, compiled: bool) -> tuple[float, int | None]:
    """(seconds per step, peak bytes) of the plain step with the fastest settings, on batches already on device."""
    model = copy.deepcopy(pretrained).to(device).train()
    set_attention(model, "sdpa")
    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, **({"fused": True} if cuda else {}))
    forward = torch.compile(model, dynamic=True) if compiled else model
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    batches = [to_device(b, device) for b in batches]

    def step(batch):
        with autocast(device, "bf16" if cuda else "fp32"):
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for batch in batches[:warmup]:
        step(batch)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    cost.synchronize(device)
    t0 = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    cost.synchronize(device)
    seconds = (time.perf_counter() - t0) / (len(batches) - warmup)
    return seconds, torch.cuda.max_memory_allocated(device) if cuda else None


def measure_shape(label, pretrained, task, spe, make_loader, dev, device, args, peak) -> list[list]:
    """One row per (recipe, phase) and per floor variant, at one batch shape."""
    cfg, cuda, results = pretrained.config, device.type == "cuda", []
    for name in ["teacher", *args.methods]:
        rec = recipe(name, pretrained, task, spe)
        for phase, watch in cost.probe_phases(rec, task, make_loader, dev, device, warmup=args.warmup,
                                              steps=args.steps):
            results.append((name, phase, watch.seconds_per_step, step_flops(cfg, watch, rec.loss.needs_teacher),
                            watch.peak_bytes))
            print(f"{label}: {name} / {phase}: {1000 * watch.seconds_per_step:.1f} ms/step", flush=True)
    batches = [b for _, b in zip(range(args.warmup + args.steps), make_loader(0))]
    tokens = [tuple(b["input_ids"].shape) for b in batches[args.warmup:]]
    floor_flops = sum(cost.step_flops_per_token(cfg, cfg.num_hidden_layers, s, False) * b * s
                      for b, s in tokens) / len(tokens)
    floors = {}
    for compiled in [False, True] if args.compile else [False]:
        seconds, peak_bytes = floor(pretrained, batches, device, args.warmup, compiled)
        floors[compiled] = seconds
        results.append(("floor" + (", compiled" if compiled else ""), "sdpa, fused AdamW" + (", bf16" if cuda else ""),
                        seconds, floor_flops, peak_bytes))
    best_floor = min(floors.values())
    rows = []
    for name, phase, seconds, flops, peak_bytes in results:
        tflops = flops / seconds / 1e12
        rows.append([label, name, phase, f"{1000 * seconds:.1f}", f"{tflops:.3g}",
                     f"{100 * tflops / peak:.1f}%" if peak else "-", f"{seconds / best_floor:.2f}x",
                     f"{peak_bytes / 2 ** 30:.2f}" if peak_bytes else "-"])
    return rows


def real_loader(task, model_name: str, source: str, batch: int, seq: int):
    tokenizer = models.load_tokenizer("minilm" if model_name == "minilm" else "tiny")  # bert-base-uncased vocab
    ds = data.tokenize(data.load_split(task, "train", source), tokenizer, seq)
    return lambda epoch: data.make_loader(ds, tokenizer, batch, shuffle=True, seed=epoch)


def union_busy(intervals: list[tuple[float, float]]) -> tuple[float, list[float]]:
    """(time covered by the intervals, the gaps between them), in the intervals' unit."""
    busy, gaps, end = 0.0, [], None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            if end is not None:
                gaps.append(start - end)
            busy += stop - start
            end = stop
        elif stop > end:
            busy += stop - end
            end = stop
    return busy, gaps


def profile_spd(pretrained, task, spe, make_loader, dev, device, args, steps: int = 3, rows: int = 12) -> str:
    """torch.profiler over `steps` steps of SPD's pruning phase, through the loop."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
    state = {"n": 0}

    def on_step(end):
        state["n"] += 1
        if state["n"] in (args.warmup, args.warmup + steps):
            cost.synchronize(device)
            if state["n"] == args.warmup:
                prof.start()
                state["t0"] = time.perf_counter()
            else:
                state["wall"] = (time.perf_counter() - state["t0"]) * 1e6 / steps    # µs per step
                prof.stop()
    cost.probe_phases(recipe("spd", pretrained, task, spe), task, make_loader, dev, device, warmup=args.warmup,
                      steps=steps, only=[0], extra=Hooks(on_step=on_step))
    averages = prof.key_averages()
    host = sorted((a for a in averages if a.device_type == DeviceType.CPU), key=lambda a: -a.self_cpu_time_total)
    lines = [f"### torch.profiler: {steps} steps of SPD's pruning phase through the loop, per step",
             "", f"Wall time {state['wall'] / 1000:.2f} ms per step."]
    events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    if cuda and not events:
        lines[-1] += " The profiler recorded no device events (is CUPTI available?): no GPU breakdown."
    elif cuda:
        busy, gaps = union_busy([(e.time_range.start, e.time_range.end) for e in events])
        lines[-1] += (f" The GPU was busy {busy / steps / 1000:.2f} ms of it ({100 * busy / steps / state['wall']:.0f} "
                      f"%), {len(events) / steps:.0f} kernels and copies per step; between them it idled "
                      f"{sum(gaps) / steps / 1000:.2f} ms per step in {len(gaps) / steps:.0f} gaps (largest "
                      f"{max(gaps, default=0):.0f} µs, {sum(1 for g in gaps if g >= 20) / steps:.0f} of 20 µs or "
                      f"more): what the host's launches did not cover.")
        kernels = sorted((a for a in averages if a.device_type == DeviceType.CUDA),
                         key=lambda a: -a.self_device_time_total)
        lines += ["", tabulate([[a.key[:90], f"{a.count / steps:.0f}", f"{a.self_device_time_total / steps / 1000:.3f}",
                                 f"{100 * a.self_device_time_total / busy:.1f}%"] for a in kernels[:rows]],
                               headers=["kernel", "calls/step", "GPU ms/step", "share of busy"], tablefmt="github")]
    else:
        lines[-1] += " CPU run: no device events (GPU busy time, idle gaps and kernels need CUDA)."
    lines += ["", tabulate([[a.key[:90], f"{a.count / steps:.0f}", f"{a.self_cpu_time_total / steps / 1000:.3f}"]
                            for a in host[:rows]], headers=["host op", "calls/step", "self CPU ms/step"],
                           tablefmt="github")]
    return "\n".join(lines)


def device_lines(device) -> list[str]:
    if device.type != "cuda":
        return ["- device: CPU (no CUDA device): ms/step only; TFLOP/s against no peak, no GPU memory"]
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        driver = "unknown (no nvidia-smi)"
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops(name)
    return [f"- device: {name} (dense bf16 peak {f'{peak} TFLOP/s' if peak else 'not in BF16_PEAK'}), driver "
            f"{driver}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, torch {torch.__version__}"]


def main(argv=None) -> int:
    ap = bench_parser(__doc__, quick="tiny model, batch 8 x 32, 1 + 1 steps, built-in samples; runs on the CPU too")
    ap.add_argument("--model", default="bert-base", choices=["bert-base", "minilm", "tiny"])
    ap.add_argument("--task", help="real data's task (default: rte for bert-base, mrpc for minilm)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per phase (default 20)")
    ap.add_argument("--methods", default=None, help="comma-separated (default: every built-in method)")
    ap.add_argument("--compile", action="store_true", help="also time the floor under torch.compile")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print("gpu_step.py: no CUDA device here (torch.cuda.is_available() is False); --quick runs the CPU smoke check")
        return 2
    threads = torch.get_num_threads()
    if args.quick:
        args.model, args.batch, args.seq, args.warmup, args.steps = "tiny", 8, 32, 1, 1
        torch.set_num_threads(1)    # a smoke check on a shared machine: one thread does not wait for others
    args.methods = args.methods.split(",") if args.methods else builtin_methods()
    device = torch.device("cuda" if cuda else "cpu")
    m = machine()
    task = get_task(args.task or ("mrpc" if args.model == "minilm" else "rte"))
    torch.manual_seed(42)
    pretrained = (cost.random_model("bert-base-uncased", task) if args.model == "bert-base"
                  else models.load_pretrained(args.model, task, 42))
    spe = cost.GLUE_SIZES[task.name][0] // args.batch
    peak = peak_tflops(torch.cuda.get_device_name(device)) if cuda else None
    try:
        source, skipped = glue_dir(args.quick), ""
    except SystemExit as missing:      # the random shape still runs
        source, skipped = None, f"Real-length rows skipped: {missing}."
    random_train, dev = random_loaders(task, pretrained.config.vocab_size, args.batch, args.seq,
                                       args.warmup + args.steps)
    shapes = [(f"random {args.batch} x {args.seq}", random_train)]
    if source:
        shapes.append((f"real {task.name.upper()}, dynamic padding",
                       real_loader(task, args.model, source, args.batch, args.seq)))
    rows = []
    for label, make_loader in shapes:
        rows += measure_shape(label, pretrained, task, spe, make_loader, dev, device, args, peak)
    table = tabulate(rows, headers=["batches", "recipe", "phase", "ms/step", "TFLOP/s", "of bf16 peak", "vs floor",
                                    "peak GiB"], tablefmt="github", disable_numparse=True)
    print(table)
    profile = profile_spd(pretrained, task, spe, random_train, dev, device, args)
    print(profile)
    verdicts = []
    if cuda and args.model == "bert-base" and (args.batch, args.seq) == (32, 128):
        for row in (r for r in rows if r[0] == shapes[0][0] and r[1] in TARGETS):
            ms, ratio, limit = float(row[3]), float(row[6][:-1]), TARGETS[row[1]]
            verdict = f"- {row[1]} / {row[2]}: {ms:.1f} ms ({'meets' if ms <= limit else 'MISSES'} <= {limit:g} ms)"
            if row[1] == "spd":
                verdict += f"; {ratio:.2f}x the floor ({'meets' if ratio <= FLOOR_RATIO else 'MISSES'} <= 1.6x)"
            verdicts.append(verdict)
    body = "\n".join([
        section_header(f"GPU: every method's step through the loop against the floor ({args.model})",
                       m + device_lines(device), __doc__),
        f"`{args.model}` ({sum(p.numel() for p in pretrained.parameters()) / 1e6:.1f}M parameters), task head "
        f"{task.name}; per phase {args.warmup} warm-up + {args.steps} timed steps. "
        + (f"Real batches from `{source}`." if source else skipped),
        "",
        table,
        "",
        *(["Targets (issue 11, BERT-base 32 x 128, one H100):", "", *verdicts, ""] if verdicts else []),
        profile,
    ])
    publish("gpu_step" if args.model == "bert-base" else f"gpu_step_{args.model}", body, args)
    torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
