"""The GLUE tasks in one table, and the metrics the paper reports for each.

Label ids follow the Hugging Face hub (`nyu-mll/glue`), so a model trained on the hub data, on the
original TSV files or on the built-in samples predicts the same id for the same class.
"""
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.stats import ConstantInputWarning, pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from harness.errors import unknown_name


@dataclass(frozen=True)
class Task:
    name: str                      # our key, also the hub config name: 'mnli', 'sst2', ...
    glue_dir_name: str             # sub-directory in the original glue_data layout: 'MNLI', 'SST-2', ...
    text_keys: tuple               # hub column names of the two texts; the second is None for one-sentence tasks
    labels: tuple | None           # label names in hub id order; None for STS-B (regression)
    metric: str                    # the paper's metric: 'accuracy' | 'f1' | 'mcc' | 'spearman'
    metric_label: str              # its short name in tables
    dev_split: str                 # hub split the paper evaluates on
    # How to read the original TSV files.
    train_file: str
    dev_file: str
    tsv_header: bool               # the first line names the columns (every task but CoLA)
    tsv_text_a: int                # column index of the first text
    tsv_text_b: int | None         # column index of the second text; None for one-sentence tasks
    tsv_label: int                 # column index of the label; negative counts from the end
    tsv_labels_are_names: bool     # labels written as names ('entailment') rather than ids ('1')

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.text_keys[1] is not None


def _tsv(train_file='train.tsv', dev_file='dev.tsv', *, header=True, a, b, label, names=False) -> dict:
    return dict(train_file=train_file, dev_file=dev_file, tsv_header=header, tsv_text_a=a,
                tsv_text_b=b, tsv_label=label, tsv_labels_are_names=names)


_NLI = ('entailment', 'not_entailment')

# In the paper's table order; WNLI last because the paper leaves it out.
TASKS: dict[str, Task] = {task.name: task for task in [
    # MNLI's gold_label is the last column; dev has four more annotator columns than train (16 vs 12).
    Task('mnli', 'MNLI', ('premise', 'hypothesis'), ('entailment', 'neutral', 'contradiction'),
         'accuracy', 'Acc', 'validation_matched',
         **_tsv(dev_file='dev_matched.tsv', a=8, b=9, label=-1, names=True)),
    Task('qqp', 'QQP', ('question1', 'question2'), ('not_duplicate', 'duplicate'),
         'f1', 'F1', 'validation', **_tsv(a=3, b=4, label=5)),
    Task('qnli', 'QNLI', ('question', 'sentence'), _NLI,
         'accuracy', 'Acc', 'validation', **_tsv(a=1, b=2, label=3, names=True)),
    Task('sst2', 'SST-2', ('sentence', None), ('negative', 'positive'),
         'accuracy', 'Acc', 'validation', **_tsv(a=0, b=None, label=1)),
    # CoLA has no header: source, label, the author's original '*' mark, sentence.
    Task('cola', 'CoLA', ('sentence', None), ('unacceptable', 'acceptable'),
         'mcc', 'Mcc', 'validation', **_tsv(header=False, a=3, b=None, label=1)),
    Task('stsb', 'STS-B', ('sentence1', 'sentence2'), None,
         'spearman', 'Spea', 'validation', **_tsv(a=7, b=8, label=9)),
    Task('mrpc', 'MRPC', ('sentence1', 'sentence2'), ('not_equivalent', 'equivalent'),
         'f1', 'F1', 'validation', **_tsv(a=3, b=4, label=0)),
    Task('rte', 'RTE', ('sentence1', 'sentence2'), _NLI,
         'accuracy', 'Acc', 'validation', **_tsv(a=1, b=2, label=3, names=True)),
    # WNLI's hub ids are the other way round from RTE's: 1 = entailment.
    Task('wnli', 'WNLI', ('sentence1', 'sentence2'), ('not_entailment', 'entailment'),
         'accuracy', 'Acc', 'validation', **_tsv(a=1, b=2, label=3)),
]}

PAPER_TASKS: tuple[str, ...] = tuple(name for name in TASKS if name != 'wnli')

STSB_MAX_SCORE = 5.0


def get_task(name: str) -> Task:
    """Look a task up by key or by its glue_data directory name, in any case: 'SST-2', 'sst2', 'STS-B'."""
    wanted = name.strip().lower()
    for task in TASKS.values():
        if wanted in (task.name, task.glue_dir_name.lower()):
            return task
    raise unknown_name('task', name, TASKS)


def _correlation(fn, predictions, references) -> float:
    # A constant prediction has no rank information. scipy answers NaN, which would poison
    # "best checkpoint" comparisons; 0.0 is what scikit-learn's MCC gives for the same case.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConstantInputWarning)
        value = float(fn(predictions, references)[0])
    return 0.0 if math.isnan(value) else value


def compute_metrics(task: Task, predictions, references) -> dict[str, float]:
    """All the usual GLUE metrics of one task, plus 'score': the paper's metric times 100.

    `predictions` are class ids, or scores for STS-B; `references` the gold labels.
    """
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.ndim != 1 or predictions.shape != references.shape or len(predictions) == 0:
        raise ValueError(f'{task.name}: need two equally long, non-empty 1-d sequences, '
                         f'got shapes {predictions.shape} and {references.shape}')
    if task.is_regression:
        predictions, references = predictions.astype(float), references.astype(float)
        metrics = {'pearson': _correlation(pearsonr, predictions, references),
                   'spearman': _correlation(spearmanr, predictions, references)}
    else:
        predictions, references = predictions.astype(int), references.astype(int)
        metrics = {'accuracy': float(accuracy_score(references, predictions))}
        if task.metric == 'f1':
            metrics['f1'] = float(f1_score(references, predictions, pos_label=1, zero_division=0.0))
        if task.metric == 'mcc':
            metrics['mcc'] = float(matthews_corrcoef(references, predictions))
    metrics['score'] = 100.0 * metrics[task.metric]
    return metrics
