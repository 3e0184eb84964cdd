"""The task table, name lookup, and the metrics against values worked out by hand."""
import math

import pytest

from harness.errors import UserError
from harness.tasks import PAPER_TASKS, TASKS, compute_metrics, get_task


@pytest.mark.parametrize('name, expected', [
    ('sst2', 'sst2'), ('SST-2', 'sst2'), ('sst-2', 'sst2'), ('STS-B', 'stsb'), ('sts-b', 'stsb'),
    ('MNLI', 'mnli'), ('CoLA', 'cola'), (' rte ', 'rte'), ('Wnli', 'wnli'),
])
def test_get_task_accepts_keys_and_glue_dir_names_in_any_case(name, expected):
    assert get_task(name).name == expected


def test_unknown_task_error_lists_every_valid_name():
    with pytest.raises(UserError) as error:
        get_task('squad')
    assert str(error.value) == ("unknown task 'squad'; valid: "
                                'cola, mnli, mrpc, qnli, qqp, rte, sst2, stsb, wnli')


def test_tasks_are_in_the_papers_order_and_the_paper_leaves_out_wnli():
    assert list(TASKS) == ['mnli', 'qqp', 'qnli', 'sst2', 'cola', 'stsb', 'mrpc', 'rte', 'wnli']
    assert PAPER_TASKS == ('mnli', 'qqp', 'qnli', 'sst2', 'cola', 'stsb', 'mrpc', 'rte')


@pytest.mark.parametrize('task', TASKS.values(), ids=list(TASKS))
def test_every_task_has_consistent_fields(task):
    labels = {'accuracy': 'Acc', 'f1': 'F1', 'mcc': 'Mcc', 'spearman': 'Spea'}
    assert task.metric_label == labels[task.metric]
    assert task.is_regression == (task.metric == 'spearman') == (task.labels is None)
    assert task.num_labels == (1 if task.is_regression else len(task.labels))
    assert task.is_pair == (task.tsv_text_b is not None) == (task.name not in ('sst2', 'cola'))
    assert task.dev_split == ('validation_matched' if task.name == 'mnli' else 'validation')
    assert task.glue_dir_name.replace('-', '').lower() == task.name
    assert task.tsv_header == (task.name != 'cola')
    # text labels in the files are exactly the label names, for the tasks that write names
    assert not task.tsv_labels_are_names or task.name in ('mnli', 'qnli', 'rte')


def test_label_ids_follow_the_hub():
    assert TASKS['mnli'].labels == ('entailment', 'neutral', 'contradiction')
    assert TASKS['rte'].labels.index('entailment') == 0
    assert TASKS['qnli'].labels.index('not_entailment') == 1
    positive = {'mrpc': 'equivalent', 'qqp': 'duplicate', 'sst2': 'positive',
                'cola': 'acceptable', 'wnli': 'entailment'}
    for name, label in positive.items():
        assert TASKS[name].labels.index(label) == 1, name


def test_paper_metric_per_task():
    assert {name: task.metric for name, task in TASKS.items()} == {
        'mnli': 'accuracy', 'qqp': 'f1', 'qnli': 'accuracy', 'sst2': 'accuracy', 'cola': 'mcc',
        'stsb': 'spearman', 'mrpc': 'f1', 'rte': 'accuracy', 'wnli': 'accuracy'}


def test_accuracy():
    metrics = compute_metrics(TASKS['sst2'], [1, 0, 1, 1], [1, 0, 0, 1])
    assert metrics == pytest.approx({'accuracy': 0.75, 'score': 75.0})


def test_accuracy_with_three_classes():
    metrics = compute_metrics(TASKS['mnli'], [0, 1, 2, 2, 1], [0, 1, 2, 0, 0])
    assert metrics == pytest.approx({'accuracy': 0.6, 'score': 60.0})


def test_f1_counts_class_1_as_positive():
    # TP = 2 (items 0, 4), FP = 1 (item 1), FN = 1 (item 3): precision = recall = F1 = 2/3
    metrics = compute_metrics(TASKS['mrpc'], [1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert metrics == pytest.approx({'accuracy': 0.6, 'f1': 2 / 3, 'score': 200 / 3})
    assert compute_metrics(TASKS['qqp'], [1, 1, 0, 0, 1], [1, 0, 0, 1, 1])['score'] == pytest.approx(200 / 3)


def test_matthews_correlation():
    # TP = 2, TN = 2, FP = 1, FN = 1: (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3
    metrics = compute_metrics(TASKS['cola'], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1])
    assert metrics == pytest.approx({'accuracy': 4 / 6, 'mcc': 1 / 3, 'score': 100 / 3})


def test_spearman_and_pearson():
    # Same ranks, so Spearman is 1; Pearson: cov 14 / sqrt(50 * 5)
    metrics = compute_metrics(TASKS['stsb'], [1.0, 2.0, 3.0, 10.0], [1.0, 2.0, 3.0, 4.0])
    assert metrics == pytest.approx({'pearson': 14 / math.sqrt(250), 'spearman': 1.0, 'score': 100.0})
    # one swapped pair of four: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert compute_metrics(TASKS['stsb'], [1, 2, 3, 4], [1, 3, 2, 4])['spearman'] == pytest.approx(0.8)


def test_constant_predictions_score_zero_not_nan():
    assert compute_metrics(TASKS['stsb'], [2.5] * 4, [1.0, 3.0, 2.0, 4.0])['score'] == 0.0
    assert compute_metrics(TASKS['cola'], [1] * 4, [1, 0, 0, 1])['score'] == 0.0


def test_inputs_of_different_lengths_are_rejected():
    with pytest.raises(ValueError, match='equally long'):
        compute_metrics(TASKS['rte'], [0, 1], [0, 1, 1])
