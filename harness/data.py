"""GLUE data from three sources, one schema, one path to model-ready batches.

Sources: the built-in samples ('samples'), the Hugging Face hub ('hub'), or a directory in the
original glue_data layout (`<dir>/<TASK>/train.tsv`, ...). Every source yields a `datasets.Dataset`
with exactly the columns

    text_a  str
    text_b  str, '' for one-sentence tasks (SST-2, CoLA)
    label   int64 class id in hub order, or float32 0..5 for STS-B
    idx     int64 position of the example in its split

which `tokenize` turns into token ids (cached on disk) and `make_loader` into padded batches.
"""
import csv
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import datasets
import torch
from transformers import DataCollatorWithPadding

from harness import hub
from harness.errors import UserError
from harness.samples import SAMPLES_VERSION, make_samples
from harness.store import umask
from harness.tasks import STSB_MAX_SCORE, Task

SAMPLES = 'samples'
HUB = 'hub'
HUB_DATASET = 'nyu-mll/glue'
SPLITS = ('train', 'dev')
COLUMNS = ('text_a', 'text_b', 'label', 'idx')
MODEL_COLUMNS = ('input_ids', 'attention_mask', 'token_type_ids', 'labels')
# Bump when `tokenize` changes what it writes, so that old cache entries are not reused.
TOKENIZE_VERSION = 1


def features(task: Task) -> datasets.Features:
    """The schema every `load_split` result has."""
    return datasets.Features({
        'text_a': datasets.Value('string'),
        'text_b': datasets.Value('string'),
        'label': datasets.Value('float32' if task.is_regression else 'int64'),
        'idx': datasets.Value('int64'),
    })


def resolve_source(glue_dir: str | os.PathLike | None) -> str:
    """SAMPLES, HUB, or the absolute path of a glue_data directory.

    An explicit `glue_dir` wins, then the GLUE_DIR environment variable, then the samples.
    """
    chosen = str(glue_dir or os.environ.get('GLUE_DIR') or SAMPLES)
    if chosen in (SAMPLES, HUB):
        return chosen
    path = Path(chosen).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"GLUE directory {chosen} is a file, not a directory "
                        f"(give a glue_data directory, '{SAMPLES}' or '{HUB}')")
    if not path.is_dir():
        raise UserError(f"GLUE directory {chosen} does not exist "
                        f"(give a glue_data directory, '{SAMPLES}' or '{HUB}')")
    return str(path.resolve())


def load_split(task: Task, split: str, source: str) -> datasets.Dataset:
    """Split 'train' or 'dev' (the paper's dev set: dev-matched for MNLI) of `task` from `source`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if source == SAMPLES:
        columns = make_samples(task, split)
    elif source == HUB:
        return _load_hub(task, split)
    else:
        columns = _read_tsv(task, _tsv_path(task, split, source))
    columns['idx'] = list(range(len(columns['label'])))
    return datasets.Dataset.from_dict(columns, features=features(task))


def _load_hub(task: Task, split: str) -> datasets.Dataset:
    # The hub config names are our task names: 'sst2', 'stsb', ...
    hub_split = 'train' if split == 'train' else task.dev_split
    reason = hub.unreachable()
    if reason is not None and not hub.offline():
        # datasets would retry for most of a minute, then fail with a traceback
        raise UserError(f"--glue-dir hub: the Hugging Face hub cannot be reached ({reason}); set HF_HUB_OFFLINE=1 "
                        f"to use the local datasets cache, or give a glue_data directory")
    try:
        ds = datasets.load_dataset(HUB_DATASET, task.name, split=hub_split)
    except (OSError, ValueError) as error:   # ConnectionError, DatasetNotFoundError, offline without a cache
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(f"--glue-dir hub: cannot load {HUB_DATASET} {task.name} {hub_split} ({first}); "
                        f"give a glue_data directory instead") from None
    first, second = task.text_keys
    ds = ds.select_columns([key for key in (first, second, 'label', 'idx') if key])
    ds = ds.rename_columns({first: 'text_a', **({second: 'text_b'} if second else {})})
    if not second:
        ds = ds.add_column('text_b', [''] * len(ds))
    # cast also turns the hub's ClassLabel into plain int64 ids, and its int32 idx into int64
    return ds.select_columns(list(COLUMNS)).cast(features(task))


def _tsv_path(task: Task, split: str, glue_dir: str) -> Path:
    path = Path(glue_dir) / task.glue_dir_name / (task.train_file if split == 'train' else task.dev_file)
    if not path.is_file():
        raise UserError(f'{path} not found (looked for the task {task.glue_dir_name} in glue dir {glue_dir})')
    return path


def _label_reader(task: Task, path: Path):
    """A function from a label cell and its line number to the label id (or STS-B score)."""
    if task.is_regression:
        def read_score(cell: str, line: int) -> float:
            try:
                score = float(cell)
            except ValueError:
                score = float('nan')
            if not 0.0 <= score <= STSB_MAX_SCORE:   # also false for nan
                raise UserError(f'{path}:{line}: score {cell!r} is not a number from 0 to {STSB_MAX_SCORE:g}')
            return score
        return read_score

    names = task.labels if task.tsv_labels_are_names else tuple(str(i) for i in range(task.num_labels))
    ids = {name: i for i, name in enumerate(names)}

    def read_label(cell: str, line: int) -> int:
        if cell not in ids:
            raise UserError(f"{path}:{line}: label {cell!r} is not one of {', '.join(names)}")
        return ids[cell]
    return read_label


def _read_tsv(task: Task, path: Path) -> dict[str, list]:
    """text_a, text_b and label columns of one original GLUE file, every row checked."""
    # utf-8-sig drops MRPC's byte order mark; QUOTE_NONE keeps the stray quotes of QNLI and MRPC text.
    with open(path, encoding='utf-8-sig', newline='') as file:
        rows = csv.reader(file, delimiter='\t', quoting=csv.QUOTE_NONE)
        try:
            return _columns(task, path, rows)
        except csv.Error as error:
            raise UserError(f'{path}:{rows.line_num}: {error}') from None
        except UnicodeDecodeError as error:
            # the file is decoded in blocks, so there is no trustworthy line number here
            raise UserError(f'{path}: not UTF-8 text ({error})') from None


def _columns(task: Task, path: Path, rows) -> dict[str, list]:
    read_label = _label_reader(task, path)
    used = [task.tsv_text_a, task.tsv_label] + ([task.tsv_text_b] if task.is_pair else [])
    needed = max(max(used) + 1, -min(used))
    columns = {'text_a': [], 'text_b': [], 'label': []}
    width = None
    if task.tsv_header:
        header = next(rows, None)
        if header is None:
            raise UserError(f'{path}: empty file, expected a header line')
        _check_text(header, path, rows.line_num)
        width = len(header)
    for row in rows:
        if not row:
            continue     # a blank line, e.g. at the end of a hand-edited file
        _check_text(row, path, rows.line_num)
        width = width or len(row)   # without a header the first row sets the width
        if len(row) != width or width < needed:
            raise UserError(f'{path}:{rows.line_num}: expected {max(width, needed)} columns, got {len(row)}')
        columns['text_a'].append(row[task.tsv_text_a])
        columns['text_b'].append(row[task.tsv_text_b] if task.is_pair else '')
        columns['label'].append(read_label(row[task.tsv_label].strip(), rows.line_num))
    if not columns['label']:
        # an empty split would only fail later, deep in training or scoring
        raise UserError(f'{path}: no examples' + (' (only a header line)' if task.tsv_header else ''))
    return columns


def _check_text(row: list[str], path: Path, line: int) -> None:
    """A NUL byte is never text: the csv module (Python >= 3.11) would pass it on as a character."""
    if any('\0' in cell for cell in row):
        raise UserError(f'{path}:{line}: NUL byte; not a text file')


def data_fingerprint(task: Task, source: str) -> str:
    """A stable name for the data of `task` from `source`, for cache keys (teachers, tokenized data)."""
    if source == SAMPLES:
        return f'samples-v{SAMPLES_VERSION}:{task.name}'
    if source == HUB:
        return f'hub:{HUB_DATASET}:{task.name}'
    digest = hashlib.sha256()
    for split in SPLITS:
        path = _tsv_path(task, split, source)
        digest.update(path.name.encode() + b'\0')
        with open(path, 'rb') as file:
            for block in iter(lambda: file.read(1 << 20), b''):
                digest.update(block)
    return f'glue_dir:{task.name}:{digest.hexdigest()[:16]}'


def _tokenizer_identity(tokenizer) -> str:
    """Everything that decides the token ids: vocabulary, normalization (lowercasing), special tokens.

    `name_or_path` alone is not enough: it is '' for a tokenizer built from a vocab file.
    """
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is None:
        spec = {'class': type(tokenizer).__name__, 'vocab': sorted(tokenizer.get_vocab().items())}
    else:
        spec = json.loads(backend.to_str())
        for call_setting in ('truncation', 'padding'):    # set per call, not part of the tokenizer
            spec.pop(call_setting, None)
    return json.dumps([tokenizer.name_or_path, len(tokenizer), spec], sort_keys=True)


def tokenize(ds: datasets.Dataset, tokenizer, max_length: int,
             cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """Columns input_ids, attention_mask, token_type_ids, labels; truncated to max_length, not padded.

    With `cache_dir`, the result is stored under cache_dir/<key> and reused; the key covers the
    data (its datasets fingerprint), the tokenizer and max_length.
    """
    key = hashlib.sha256(json.dumps(
        [TOKENIZE_VERSION, ds._fingerprint, _tokenizer_identity(tokenizer), max_length]).encode()).hexdigest()[:24]
    target = Path(cache_dir) / key if cache_dir is not None else None
    if target is not None and target.is_dir():
        return datasets.load_from_disk(str(target))

    # One-sentence tasks have text_b == '' everywhere; passing it as a pair would add a second [SEP].
    is_pair = any(ds['text_b'])

    def encode(batch):
        encoded = tokenizer(batch['text_a'], batch['text_b'] if is_pair else None, truncation=True,
                            max_length=max_length, return_token_type_ids=True, return_attention_mask=True)
        return {**encoded, 'labels': batch['label']}

    tokenized = ds.map(encode, batched=True, remove_columns=ds.column_names, keep_in_memory=True,
                       new_fingerprint=key, desc='tokenize')
    tokenized = tokenized.select_columns(list(MODEL_COLUMNS))
    if target is None:
        return tokenized
    _save_atomically(tokenized, target)
    return datasets.load_from_disk(str(target))


def _save_atomically(ds: datasets.Dataset, target: Path) -> None:
    """Write into a temporary directory next to `target`, then rename: readers never see half a cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{target.name}.', dir=target.parent))
    os.chmod(tmp, 0o777 & ~umask())   # mkdtemp's 0700 would make the shared cache private to one user
    try:
        ds.save_to_disk(str(tmp))
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        # another process wrote the same entry first; its copy is as good as ours
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def make_loader(ds: datasets.Dataset, tokenizer, batch_size: int, shuffle: bool, seed: int,
                pad_to: int | None = None) -> torch.utils.data.DataLoader:
    """Batches of `tokenize` output, padded to the longest example of each batch (or to `pad_to`).

    The shuffle order comes from its own generator seeded with `seed`: the same seed gives the
    same batches, whatever else has drawn random numbers.
    """
    if pad_to is None:
        collate = DataCollatorWithPadding(tokenizer, return_tensors='pt')
    else:   # fixed shapes, as run_glue's --pad_to_max_length
        collate = DataCollatorWithPadding(tokenizer, padding='max_length', max_length=pad_to, return_tensors='pt')
    # Pinned host memory lets the loop's non_blocking copies overlap the GPU's work.
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=shuffle, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed) if shuffle else None, collate_fn=collate)
