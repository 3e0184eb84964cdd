"""`spd-bench eval`: bring your own checkpoint. Any BERT sequence-classification checkpoint (a local folder or a
hub id; safetensors only) is scored on a task's dev set with the metrics and data path of a trained cell, its
per-matrix sparsity and non-zero parameters are measured, and the result is a run directory with a trained
cell's files and guarantees, which `spd-bench table` shows as a row of its own, named by `--name`:

  config.json       this evaluation's settings, the checkpoint's identity, the data source, the label mapping
  manifest.json     commit, package versions, device, times (as for a trained cell)
  metrics.json      final = best = this evaluation (step 0); method = the name; teacher null; seed as given or null
  sparsity.json     zeros / size / sparsity of every prunable matrix
  predictions.jsonl dev predictions (idx, prediction, label) in the task's label ids
  model/            the checkpoint as evaluated: its head in the task's label order, labels and a model card

Label order. A checkpoint's output i means whatever its `id2label[i]` names. Real names are matched to the
task's (harness/tasks.py, case, spaces and hyphens ignored) and the classifier rows are permuted into the
task's order; generic names (LABEL_0, LABEL_1, ... in order) are taken to be in the task's order, and that
assumption is recorded; anything else is one clear error (`--label-order` states the order by hand).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from harness import data, models, store
from harness.errors import UserError
from harness.tasks import Task, get_task

METHOD_PREFIX = "eval:"
_GENERIC = re.compile(r"^(label_?)?(\d+)$")


@dataclass
class EvalConfig:
    checkpoint: str                      # a local checkpoint folder or a hub id
    task: str
    name: str | None = None              # the table row; default eval:<checkpoint's folder name>
    model: str | None = None             # the table section (base model) it belongs to; default: the checkpoint
    tokenizer: str | None = None         # default: the checkpoint's own
    label_order: list[str] | None = None  # the checkpoint's outputs as task label names, overriding id2label
    seed: int | None = None              # the seed it was trained with, if known (several seeds: mean ± std)
    glue_dir: str | None = None
    eval_batch_size: int = 128
    max_seq_length: int = 128
    max_eval_examples: int | None = None
    device: str | None = None
    precision: str = "auto"

    @property
    def row_name(self) -> str:
        return self.name or default_name(self.checkpoint)


def default_name(checkpoint: str) -> str:
    """eval:<folder name>; a run's `.../<run>/model` is named after the run."""
    path = Path(checkpoint.rstrip("/"))
    base = path.parent.name if path.name == "model" and path.parent.name else path.name
    return f"{METHOD_PREFIX}{base}"


def check_name(name: str) -> None:
    from harness.registry import all_methods
    if not name.strip():
        raise UserError("--name must not be empty")
    if name in all_methods():
        raise UserError(f"--name {name!r} is a registered method's name; give the checkpoint a name of its own "
                        f"(its rows would mix with that method's)")


# --- loading ----------------------------------------------------------------------------------------------------

def _looks_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or "\\" in ref


def _check_local(path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is not a folder (a checkpoint is a folder with config.json and "
                        f"model.safetensors)")
    if not (path / "config.json").is_file():
        raise UserError(f"checkpoint {path} has no config.json: not a Hugging Face checkpoint folder")
    if not list(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickles:
            raise UserError(f"checkpoint {path} has only pickled PyTorch weights ({pickles[0]}); spd-bench loads "
                            f"safetensors only: save it with save_pretrained (safetensors) and evaluate that copy")
        raise UserError(f"checkpoint {path} has no model weights (model.safetensors)")


def resolve_checkpoint(ref: str) -> str:
    """A local folder (checked) as an absolute path, or a hub id as given."""
    path = Path(ref).expanduser()
    if path.exists() or _looks_local(ref):
        if not path.exists():
            raise UserError(f"checkpoint {ref} not found")
        _check_local(path)
        return str(path.resolve())
    return ref


def load_classifier(ref: str):
    """A BertForSequenceClassification with every weight from the checkpoint (safetensors), or a UserError."""
    from transformers import AutoConfig, BertForSequenceClassification
    resolved = resolve_checkpoint(ref)
    try:  # a hub id: the local Hugging Face cache first, the hub only when it can be reached (no minute of retries)
        config = models.from_cache_or_hub(AutoConfig.from_pretrained, resolved)
    except (OSError, ValueError, models.HubUnreachable) as err:
        why = err.reason if isinstance(err, models.HubUnreachable) else type(err).__name__
        raise UserError(f"checkpoint {ref!r} is neither a local folder nor a reachable hub model ({why})") from None
    if config.model_type != "bert":
        raise UserError(f"checkpoint {ref!r} is a {config.model_type!r} model; spd-bench evaluates BERT "
                        f"sequence classifiers only")
    architectures = config.architectures or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise UserError(f"checkpoint {ref!r} is a {architectures[0]}, not a sequence classifier")
    try:
        with models._quiet_hf():
            model, info = BertForSequenceClassification.from_pretrained(
                resolved, attn_implementation="eager", use_safetensors=True, output_loading_info=True)
    except OSError as err:
        if "safetensors" in str(err):
            raise UserError(f"checkpoint {ref!r} has no safetensors weights; spd-bench loads safetensors only") from None
        raise UserError(f"cannot load checkpoint {ref!r} ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    except (SafetensorError, RuntimeError, ValueError) as err:   # a damaged or truncated weights file
        raise UserError(f"cannot read the weights of checkpoint {ref!r} ({type(err).__name__}: "
                        f"{(str(err).splitlines() or [''])[0]})") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise UserError(f"checkpoint {ref!r} lacks {len(missing)} weight(s) of a BERT sequence classifier "
                        f"(e.g. {missing[0]}): it is not a fine-tuned classifier")
    return model, resolved


def load_eval_tokenizer(cfg: EvalConfig, resolved: str):
    if cfg.tokenizer:
        return models.load_tokenizer(cfg.tokenizer)
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"checkpoint {cfg.checkpoint!r} has no usable tokenizer ({type(err).__name__}); pass "
                        f"--tokenizer NAME_OR_PATH (e.g. the base model's)") from None


# --- labels ------------------------------------------------------------------------------------------------------

def _norm(name) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def label_mapping(id2label: dict, num_labels: int, task: Task, label_order: list[str] | None = None
                  ) -> tuple[list[int], dict]:
    """(order, record): order[i] is the task's label id of the checkpoint's output i.

    Real names are matched to the task's; generic names in order (LABEL_0, ...) are assumed to be the task's
    order; `label_order` (names) overrides id2label. Raises UserError when the outputs cannot be matched."""
    names = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(num_labels)]
    record = {"checkpoint_id2label": names, "task_labels": list(task.labels or ["score"])}
    if task.is_regression:
        if num_labels != 1:
            raise UserError(f"task {task.name} is a regression (one output); the checkpoint has {num_labels} outputs")
        return [0], {**record, "how": "regression (one output)"}
    if num_labels != task.num_labels:
        raise UserError(f"the checkpoint has {num_labels} outputs, task {task.name} has {task.num_labels} labels "
                        f"({', '.join(task.labels)})")
    wanted = {_norm(n): i for i, n in enumerate(task.labels)}
    given, how = names, "id2label names"
    if label_order:
        given, how = list(label_order), "--label-order"
        if len(given) != num_labels:
            raise UserError(f"--label-order names {len(given)} labels; the checkpoint has {num_labels} outputs")
    elif all((m := _GENERIC.match(_norm(n))) and int(m.group(2)) == i for i, n in enumerate(names)):
        return list(range(num_labels)), {**record, "how": "assumed the task's order (generic names LABEL_0..)"}
    order = [wanted.get(_norm(n)) for n in given]
    if None in order or sorted(order) != list(range(num_labels)):
        raise UserError(f"the checkpoint's labels ({', '.join(given)}) do not match task {task.name}'s "
                        f"({', '.join(task.labels)}); rename them in its config.json id2label or pass "
                        f"--label-order with the task's names in the checkpoint's output order")
    return order, {**record, "how": how + (" (permuted into the task's order)" if order != sorted(order) else "")}


@torch.no_grad()
def align_head(model, order: list[int], task: Task) -> None:
    """Permute the classifier's rows so output j is the task's label j; give the config the task's labels."""
    from harness.modelcard import set_labels
    if order != sorted(order):
        rows = torch.tensor([order.index(j) for j in range(len(order))])
        model.classifier.weight.copy_(model.classifier.weight[rows].clone())
        model.classifier.bias.copy_(model.classifier.bias[rows].clone())
    set_labels(model.config, task)


# --- the evaluation ----------------------------------------------------------------------------------------------

def _weights_digest(resolved: str) -> dict[str, str] | None:
    path = Path(resolved)
    if not path.is_dir():
        return None
    return {f.name: store.file_sha256(f) for f in sorted(path.glob("*.safetensors"))}


def evaluate_checkpoint(cfg: EvalConfig, out_dir, cache_dir=None) -> dict:
    """Evaluate `cfg.checkpoint` on `cfg.task`'s dev set into the run directory `out_dir`; returns its metrics."""
    from harness.modelcard import write_eval_card
    from harness.run import default_cache_dir, sparsity_report
    from harness.train import evaluate, resolve_precision
    started = time.time()
    task = get_task(cfg.task)
    name = cfg.row_name
    check_name(name)
    for field in ("eval_batch_size", "max_seq_length", "max_eval_examples"):
        if getattr(cfg, field) is not None and getattr(cfg, field) < 1:
            raise UserError(f"{field} must be positive, got {getattr(cfg, field)}")
    model, resolved = load_classifier(cfg.checkpoint)
    order, labels = label_mapping(model.config.id2label, model.config.num_labels, task, cfg.label_order)
    tokenizer = load_eval_tokenizer(cfg, resolved)
    device = models.pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, None, device)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    source = data.resolve_source(cfg.glue_dir)
    dev_raw = data.load_split(task, "dev", source)
    if cfg.max_eval_examples:
        dev_raw = dev_raw.select(range(min(cfg.max_eval_examples, len(dev_raw))))
    dev = data.tokenize(dev_raw, tokenizer, cfg.max_seq_length, cache_dir / "tokenized")
    loader = data.make_loader(dev, tokenizer, cfg.eval_batch_size, shuffle=False, seed=0)
    align_head(model, order, task)
    model.to(device)
    dev_metrics, predictions = evaluate(model, loader, task, device, precision)
    model.cpu()
    sparsity = sparsity_report(model)
    record = {"step": 0, "phase": "eval", "dev": dev_metrics}
    model_label = cfg.model or cfg.checkpoint
    out_dir = Path(out_dir)
    with store.atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        with open(tmp / "predictions.jsonl", "w") as f:
            for idx, pred, label in zip(dev_raw["idx"], predictions.tolist(), dev["labels"]):
                f.write(json.dumps({"idx": idx, "prediction": pred, "label": label}) + "\n")
        store.write_json(tmp / "sparsity.json", sparsity)
        config = {**dataclasses.asdict(cfg), "kind": "checkpoint", "name": name, "table_model": model_label,
                  "checkpoint_resolved": resolved, "checkpoint_sha256": _weights_digest(resolved),
                  "checkpoint_commit": getattr(model.config, "_commit_hash", None), "labels": labels,
                  "data_source": source, "data_fingerprint": data.data_fingerprint(task, source)}
        store.write_json(tmp / "config.json", config)
        store.write_json(tmp / "manifest.json", store.manifest(device, cfg.seed, started, time.time()))
        metrics = {"task": task.name, "method": name, "model": model_label,
                   "sparsity": sparsity["overall"], "seed": cfg.seed, "metric": task.metric,
                   "final": {"step": 0, "dev": dev_metrics}, "best": {**record, "final_shape": True},
                   "best_any": record, "precision": precision, "teacher": None,
                   "achieved_sparsity": sparsity["overall"], "params": models.count_parameters(model),
                   "encoder_layers": model.config.num_hidden_layers, "source": "checkpoint",
                   "checkpoint": cfg.checkpoint, "labels": labels["how"]}
        write_eval_card(tmp, task, metrics)
        store.write_json(tmp / "metrics.json", metrics)  # last: marks the directory complete
    return metrics


# --- in a grid -------------------------------------------------------------------------------------------------

CHECKPOINT_KEYS = {"path", "name", "tasks", "model", "tokenizer", "label_order", "seed"}
# run fields of a grid config that an evaluation shares with the grid's cells (the same dev set and lengths)
SHARED_RUN_FIELDS = ("eval_batch_size", "max_seq_length", "max_eval_examples", "device", "precision")


def grid_checkpoints(entries, config_path: Path, tasks: list[str], source: str, model: str, run: dict
                     ) -> list[EvalConfig]:
    """A grid config's `checkpoints:` -> one evaluation per (checkpoint, task). An entry:
    {path: folder or hub id (a relative folder is relative to the config file), name: row name,
    tasks: [...] (default: the grid's), model: table section (default: the grid's model), tokenizer, label_order,
    seed}. The grid's data source and shared run fields (dev subset, lengths, precision) apply."""
    if not entries:
        return []
    if not isinstance(entries, list):
        raise UserError(f"{config_path}: checkpoints: expected a list of {{path: ..., name: ...}}")
    evals = []
    for i, entry in enumerate(entries):
        where = f"{config_path}: checkpoints[{i}]"
        if not isinstance(entry, dict) or not entry.get("path"):
            raise UserError(f"{where}: expected a mapping with a 'path'")
        unknown = set(entry) - CHECKPOINT_KEYS
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                            f"valid: {', '.join(sorted(CHECKPOINT_KEYS))}")
        path = str(entry["path"])
        beside = Path(config_path).parent / path
        if not Path(path).is_absolute() and beside.exists():
            path = str(beside.resolve())
        try:   # a local folder is checked now, not after every cell has trained (a hub id when it is evaluated)
            resolve_checkpoint(path)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        name = str(entry.get("name") or default_name(path))
        check_name(name)
        order = entry.get("label_order")
        order = [n.strip() for n in order.split(",")] if isinstance(order, str) else order
        for task in entry.get("tasks") or tasks:
            evals.append(EvalConfig(checkpoint=path, task=get_task(task).name, name=name,
                                    model=entry.get("model", model), tokenizer=entry.get("tokenizer"),
                                    label_order=order, seed=entry.get("seed"), glue_dir=source,
                                    **{k: run[k] for k in SHARED_RUN_FIELDS if k in run}))
    return evals


def checkpoint_id(cfg: EvalConfig) -> str:
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.task}-{_slug(cfg.row_name)}-{digest}"


def _is_complete(run_dir: Path, cfg: EvalConfig) -> bool:
    try:
        config = store.read_json(run_dir / "config.json")
        metrics = store.read_json(run_dir / "metrics.json")
    except (OSError, ValueError):
        return False
    # config.json records the row's name as shown (a default name resolved), so `name` compares that way
    return "score" in metrics.get("final", {}).get("dev", {}) and config.get("name") == cfg.row_name and all(
        config.get(f.name) == getattr(cfg, f.name) for f in dataclasses.fields(EvalConfig) if f.name != "name")


def run_grid_checkpoints(evals: list[EvalConfig], out: Path) -> dict:
    """Evaluate a grid's checkpoints into OUT/checkpoints/<id>/ (done ones skipped; a failure is recorded in
    OUT/failed/<id>.json and the others go on). Returns {'done': n, 'failed': n}."""
    counts = {"done": 0, "failed": 0}
    for leftover in (Path(out) / "checkpoints").glob(".*.partial"):  # a killed runner's (the caller holds the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    for cfg in evals:
        cid = checkpoint_id(cfg)
        run_dir, failed = Path(out) / "checkpoints" / cid, Path(out) / "failed" / f"{cid}.json"
        try:
            if not _is_complete(run_dir, cfg):
                evaluate_checkpoint(cfg, run_dir, cache_dir=Path(out) / "cache")
            failed.unlink(missing_ok=True)
            counts["done"] += 1
        except Exception as err:  # noqa: BLE001 — recorded like a failed cell; the grid goes on
            store.write_json(failed, {"id": cid, "error": f"{type(err).__name__}: {err}",
                                      "traceback": traceback.format_exc()})
            counts["failed"] += 1
    return counts


# --- the command -------------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "checkpoint"


def eval_command(cfg: EvalConfig) -> list[str]:
    """The `spd-bench eval` command line for `cfg` (the model card's Reproduce section)."""
    parts = ["spd-bench", "eval", cfg.checkpoint, "--task", cfg.task, "--name", cfg.row_name]
    defaults = EvalConfig(checkpoint="", task="")
    for f in dataclasses.fields(EvalConfig):
        if f.name in ("checkpoint", "task", "name"):
            continue
        value = getattr(cfg, f.name)
        if value != getattr(defaults, f.name):
            flag = "--" + f.name.replace("_", "-")
            parts += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    return parts


def cmd_eval(args) -> int:
    label_order = [n.strip() for n in args.label_order.split(",")] if args.label_order else None
    cfg = EvalConfig(checkpoint=args.checkpoint, task=args.task, name=args.name, model=args.model,
                     tokenizer=args.tokenizer, label_order=label_order, seed=args.seed, glue_dir=args.glue_dir,
                     eval_batch_size=args.eval_batch_size, max_seq_length=args.max_seq_length,
                     max_eval_examples=args.max_eval_examples, device=args.device, precision=args.precision)
    task = get_task(cfg.task)
    from harness.run import claim_out_dir
    # before anything is evaluated: a new or empty directory, or a finished evaluation of this same config
    out = claim_out_dir(args.out or f"runs/eval/{_slug(cfg.row_name)}-{task.name}", lambda d: _is_complete(d, cfg))
    t0 = time.time()
    m = evaluate_checkpoint(cfg, out, cache_dir=args.cache)
    params = m["params"]
    print(f"{m['task']} {m['method']} ({cfg.checkpoint}): dev {m['metric']} {m['final']['dev']['score']:.2f}, "
          f"achieved sparsity {m['achieved_sparsity']:.3f}, {params['nonzero'] / 1e6:.2f}M of "
          f"{params['total'] / 1e6:.2f}M params non-zero, labels: {m['labels']}, {time.time() - t0:.0f}s -> {out}")
    return 0


def add_eval_command(sub) -> None:
    """Add `eval CHECKPOINT --task T [--name NAME] ...` to the CLI's subparsers."""
    ev = sub.add_parser("eval", help="evaluate your own BERT checkpoint (safetensors) into a run directory, "
                                     "a row of its own in the tables")
    ev.add_argument("checkpoint", help="a local checkpoint folder or a hub id")
    ev.add_argument("--task", required=True)
    ev.add_argument("--name", help="the row's name in tables (default: eval:<folder name>)")
    ev.add_argument("--model", help="the base model it was made from: its table section (default: the checkpoint)")
    ev.add_argument("--tokenizer", help="tokenizer name/path when the checkpoint has none (tiny, bert-base-uncased)")
    ev.add_argument("--label-order", metavar="NAME,NAME,...",
                    help="the checkpoint's outputs as the task's label names, in output order (overrides id2label)")
    ev.add_argument("--seed", type=int, help="the seed the checkpoint was trained with, if known")
    ev.add_argument("--glue-dir", help="glue_data directory, or 'hub' (default: $GLUE_DIR, else built-in samples)")
    ev.add_argument("--out", help="output run directory (default runs/eval/<name>-<task>); put it under a grid's "
                                  "output to see it in that grid's tables")
    ev.add_argument("--cache", help="tokenization cache (default: $SPD_BENCH_CACHE or ~/.cache/spd-bench)")
    ev.add_argument("--eval-batch-size", type=int, default=128)
    ev.add_argument("--max-seq-length", type=int, default=128)
    ev.add_argument("--max-eval-examples", type=int, help="score only the first N dev examples (as a run's setting)")
    ev.add_argument("--device")
    ev.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ev.set_defaults(func=cmd_eval)
