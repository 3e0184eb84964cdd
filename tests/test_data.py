"""The built-in samples, the three data sources, tokenization with its cache, and the batches."""
import hashlib
import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.stats import spearmanr
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import PolynomialFeatures
from transformers import BertTokenizerFast

from harness import data, hub
from harness.data import COLUMNS, HUB, SAMPLES, data_fingerprint, load_split, make_loader, resolve_source, tokenize
from harness.errors import UserError
from harness.samples import DEV_SIZE, TRAIN_SIZE, make_samples
from harness.tasks import TASKS, get_task

REPO = Path(__file__).resolve().parents[1]
VOCAB = REPO / 'harness' / 'assets' / 'bert-base-uncased-vocab.txt'
GLUE_DIR = Path(__file__).resolve().parents[2] / 'shared' / 'glue'
needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f'no GLUE files at {GLUE_DIR}')
ALL_TASKS = pytest.mark.parametrize('task', TASKS.values(), ids=list(TASKS))


@pytest.fixture(scope='module')
def tokenizer():
    # transformers 5 takes the file as `vocab=`; a `vocab_file=` keyword is silently ignored and
    # leaves a 5-token vocabulary that maps every word to [UNK].
    tokenizer = BertTokenizerFast(vocab=str(VOCAB), do_lower_case=True)
    assert len(tokenizer) == 30522
    return tokenizer


# ---- built-in samples ----

@ALL_TASKS
def test_samples_have_the_tasks_shape_and_balanced_classes(task):
    for split, size in (('train', TRAIN_SIZE), ('dev', DEV_SIZE)):
        samples = make_samples(task, split)
        assert set(samples) == {'text_a', 'text_b', 'label'}
        assert all(len(column) == size for column in samples.values())
        assert all(isinstance(text, str) and text for text in samples['text_a'])
        if task.is_pair:
            assert all(isinstance(text, str) and text for text in samples['text_b'])
        else:
            assert samples['text_b'] == [''] * size
        counts = Counter(samples['label'])
        if task.is_regression:
            assert all(isinstance(score, float) for score in samples['label'])
            assert sorted(counts) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        else:
            assert all(type(label) is int for label in samples['label'])
            assert sorted(counts) == list(range(task.num_labels))
        assert max(counts.values()) - min(counts.values()) <= 1


@ALL_TASKS
def test_samples_are_the_same_every_call_and_dev_is_not_in_train(task):
    assert make_samples(task, 'train') == make_samples(task, 'train')
    train, dev = make_samples(task, 'train'), make_samples(task, 'dev')
    assert not set(zip(train['text_a'], train['text_b'])) & set(zip(dev['text_a'], dev['text_b']))


def test_samples_did_not_change_without_a_version_bump():
    everything = json.dumps({name: [make_samples(task, split) for split in ('train', 'dev')]
                             for name, task in TASKS.items()}, sort_keys=True)
    assert hashlib.sha256(everything.encode()).hexdigest()[:16] == '3e849992587a10df', (
        'the samples changed: bump SAMPLES_VERSION in harness/samples.py (cache keys depend on it) '
        'and put the new digest here')


def test_sample_words_are_whole_words_of_the_bert_vocabulary():
    vocabulary = set(VOCAB.read_text(encoding='utf-8').split('\n'))
    words = {word for task in TASKS.values() for split in ('train', 'dev')
             for column in ('text_a', 'text_b') for text in make_samples(task, split)[column]
             for word in text.split()}
    assert words - vocabulary == set()


def _word_features(task, train, dev):
    """Words and word bigrams of one sentence; for pairs, the words of each text and every pair of
    one word from each (shared words, 'where' with 'in')."""
    if not task.is_pair:
        vectorizer = CountVectorizer(binary=True, token_pattern=r'\S+', ngram_range=(1, 2)).fit(train['text_a'])
        return vectorizer.transform(train['text_a']), vectorizer.transform(dev['text_a'])
    vectorizer = CountVectorizer(binary=True, token_pattern=r'\S+').fit(train['text_a'] + train['text_b'])
    pairs = PolynomialFeatures(degree=2, interaction_only=True, include_bias=False)

    def features(samples):
        words = [vectorizer.transform(samples[column]) for column in ('text_a', 'text_b')]
        return pairs.fit_transform(scipy.sparse.hstack(words).tocsc()).tocsr()
    return features(train), features(dev)


@ALL_TASKS
def test_samples_are_learnable_from_words(task):
    """A linear model on words, trained on the train split, does far better than chance on dev."""
    train, dev = make_samples(task, 'train'), make_samples(task, 'dev')
    x_train, x_dev = _word_features(task, train, dev)
    if task.is_regression:
        model = Ridge(alpha=1.0).fit(x_train, train['label'])
        assert spearmanr(model.predict(x_dev), dev['label'])[0] > 0.8
    else:
        model = LogisticRegression(C=10.0, max_iter=2000).fit(x_train, train['label'])
        assert np.mean(model.predict(x_dev) == np.array(dev['label'])) > 0.8


@ALL_TASKS
def test_sample_split_as_a_dataset(task):
    ds = load_split(task, 'dev', SAMPLES)
    assert ds.column_names == list(COLUMNS)
    assert ds.features == data.features(task)
    assert ds.features['label'].dtype == ('float32' if task.is_regression else 'int64')
    assert ds['idx'] == list(range(DEV_SIZE))
    assert ds['text_a'] == make_samples(task, 'dev')['text_a']


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match='split'):
        load_split(TASKS['rte'], 'test', SAMPLES)


# ---- choosing the source ----

def test_resolve_source_explicit_then_environment_then_samples(tmp_path, monkeypatch):
    monkeypatch.delenv('GLUE_DIR', raising=False)
    assert resolve_source(None) == SAMPLES
    assert resolve_source(HUB) == HUB
    monkeypatch.setenv('GLUE_DIR', str(tmp_path))
    assert resolve_source(None) == str(tmp_path.resolve())
    assert resolve_source(SAMPLES) == SAMPLES
    monkeypatch.setenv('GLUE_DIR', '')
    assert resolve_source(None) == SAMPLES


def test_glue_dir_that_does_not_exist(tmp_path, monkeypatch):
    missing = tmp_path / 'glue_data'
    with pytest.raises(UserError, match=f'GLUE directory {missing} does not exist'):
        resolve_source(str(missing))
    monkeypatch.setenv('GLUE_DIR', str(missing))
    with pytest.raises(UserError, match=str(missing)):
        resolve_source(None)


# ---- the real GLUE files ----

REAL_SPLITS = [
    # task, split, rows, first text_a, first text_b, first label
    ('cola', 'train', 8551, "Our friends won't buy this analysis, let alone the next one we propose.", '', 1),
    ('cola', 'dev', 1043, 'The sailors rode the breeze clear of the rocks.', '', 1),
    ('sst2', 'train', 67349, 'hide new secretions from the parental units ', '', 0),
    ('sst2', 'dev', 872, "it 's a charming and often affecting journey . ", '', 1),
    ('mrpc', 'train', 3668, 'Amrozi accused his brother , whom he called " the witness " , of deliberately '
                            'distorting his evidence .',
     'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting '
     'his evidence .', 1),
    ('mrpc', 'dev', 408, "He said the foodservice pie business doesn 't fit the company 's long-term growth "
                         'strategy .', '" The foodservice pie business does not fit our long-term growth strategy .', 1),
    ('stsb', 'train', 5749, 'A plane is taking off.', 'An air plane is taking off.', 5.0),
    ('stsb', 'dev', 1500, 'A man with a hard hat is dancing.', 'A man wearing a hard hat is dancing.', 5.0),
    ('qnli', 'dev', 5463, 'What came into force after the new constitution was herald?',
     'As of that day, the new constitution heralding the Second Republic came into force.', 0),
    ('rte', 'train', 2490, 'No Weapons of Mass Destruction Found in Iraq Yet.',
     'Weapons of Mass Destruction Found in Iraq.', 1),
    ('rte', 'dev', 277, 'Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, '
                        'according to the Christopher Reeve Foundation.', 'Christopher Reeve had an accident.', 1),
    ('wnli', 'train', 635, 'I stuck a pin through a carrot. When I pulled the pin out, it had a hole.',
     'The carrot had a hole.', 1),
    ('wnli', 'dev', 71, 'The drain is clogged with hair. It has to be cleaned.', 'The hair has to be cleaned.', 0),
]


@needs_glue
@pytest.mark.parametrize('name, split, rows, text_a, text_b, label', REAL_SPLITS,
                         ids=[f'{row[0]}-{row[1]}' for row in REAL_SPLITS])
def test_real_glue_files(name, split, rows, text_a, text_b, label):
    task = get_task(name)
    ds = load_split(task, split, resolve_source(str(GLUE_DIR)))
    assert len(ds) == rows
    assert ds.features == data.features(task)
    assert ds[0] == {'text_a': text_a, 'text_b': text_b, 'label': label, 'idx': 0}
    assert ds[-1]['idx'] == rows - 1
    labels = ds['label']
    if task.is_regression:
        assert min(labels) == 0.0 and max(labels) == 5.0
    else:
        assert set(labels) == set(range(task.num_labels))


@needs_glue
def test_real_label_ids_match_the_hubs_class_balance():
    """Known dev-set counts: they only come out like this when ids point the hub's way."""
    def count_of_1(name):
        return sum(load_split(get_task(name), 'dev', str(GLUE_DIR))['label'])
    assert count_of_1('sst2') == 444       # positive
    assert count_of_1('cola') == 721       # acceptable
    assert count_of_1('mrpc') == 279       # equivalent
    assert count_of_1('rte') == 131        # not_entailment
    assert count_of_1('wnli') == 31        # entailment


@needs_glue
def test_fingerprint_of_a_glue_dir_follows_the_file_bytes(tmp_path):
    task = TASKS['rte']
    fingerprint = data_fingerprint(task, str(GLUE_DIR))
    assert fingerprint == data_fingerprint(task, str(GLUE_DIR))
    prefix, name, digest = fingerprint.split(':')
    assert (prefix, name, len(digest)) == ('glue_dir', 'rte', 16)
    copy = tmp_path / 'RTE'
    copy.mkdir()
    for file in ('train.tsv', 'dev.tsv'):
        (copy / file).write_bytes((GLUE_DIR / 'RTE' / file).read_bytes())
    assert data_fingerprint(task, str(tmp_path)) == fingerprint
    with open(copy / 'dev.tsv', 'ab') as file:
        file.write(b'277\ta\tb\tentailment\n')
    assert data_fingerprint(task, str(tmp_path)) != fingerprint


def test_fingerprints_of_samples_and_hub():
    assert data_fingerprint(TASKS['sst2'], SAMPLES) == 'samples-v1:sst2'
    assert data_fingerprint(TASKS['sst2'], HUB) == 'hub:nyu-mll/glue:sst2'


# ---- bad files ----

RTE_HEADER = 'index\tsentence1\tsentence2\tlabel\n'


def _glue_dir(tmp_path, task_dir, files):
    (tmp_path / task_dir).mkdir()
    for name, text in files.items():
        (tmp_path / task_dir / name).write_text(text, encoding='utf-8')
    return str(tmp_path)


def test_missing_file_names_the_path(tmp_path):
    glue_dir = _glue_dir(tmp_path, 'RTE', {'train.tsv': RTE_HEADER + '0\ta\tb\tentailment\n'})
    with pytest.raises(UserError) as error:
        load_split(TASKS['rte'], 'dev', glue_dir)
    assert str(error.value) == (f'{tmp_path / "RTE" / "dev.tsv"} not found '
                                f'(looked for the task RTE in glue dir {glue_dir})')
    with pytest.raises(UserError, match='dev.tsv not found'):
        data_fingerprint(TASKS['rte'], glue_dir)


def test_malformed_row_names_file_and_line(tmp_path):
    glue_dir = _glue_dir(tmp_path, 'RTE', {'train.tsv': RTE_HEADER + '0\ta\tb\tentailment\n1\ta\tb\n'})
    with pytest.raises(UserError) as error:
        load_split(TASKS['rte'], 'train', glue_dir)
    assert str(error.value) == f'{tmp_path / "RTE" / "train.tsv"}:3: expected 4 columns, got 3'


def test_malformed_row_without_header(tmp_path):
    glue_dir = _glue_dir(tmp_path, 'CoLA', {'train.tsv': 'gj04\t1\t\tA fine sentence.\ngj04\t0\tA bad one.\n'})
    with pytest.raises(UserError, match=r'train.tsv:2: expected 4 columns, got 3'):
        load_split(TASKS['cola'], 'train', glue_dir)


def test_unknown_label_name(tmp_path):
    glue_dir = _glue_dir(tmp_path, 'RTE', {'dev.tsv': RTE_HEADER + '0\ta\tb\tentailment\n1\ta\tb\tfoo\n'})
    with pytest.raises(UserError) as error:
        load_split(TASKS['rte'], 'dev', glue_dir)
    assert str(error.value) == (f"{tmp_path / 'RTE' / 'dev.tsv'}:3: "
                                f"label 'foo' is not one of entailment, not_entailment")


def test_label_id_out_of_range(tmp_path):
    glue_dir = _glue_dir(tmp_path, 'SST-2', {'dev.tsv': 'sentence\tlabel\ngood .\t1\nodd .\t2\n'})
    with pytest.raises(UserError, match=r"dev.tsv:3: label '2' is not one of 0, 1"):
        load_split(TASKS['sst2'], 'dev', glue_dir)


@pytest.mark.parametrize('score', ['high', '5.5', '-1', 'nan'])
def test_bad_sts_b_score(tmp_path, score):
    header = 'index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n'
    row = f'0\tg\tf\ty\t0\tnone\tnone\tA cat.\tA dog.\t{score}\n'
    glue_dir = _glue_dir(tmp_path, 'STS-B', {'dev.tsv': header + row})
    with pytest.raises(UserError, match=f"dev.tsv:2: score '{score}' is not a number from 0 to 5"):
        load_split(TASKS['stsb'], 'dev', glue_dir)


def test_file_that_is_not_utf8(tmp_path):
    (tmp_path / 'RTE').mkdir()
    (tmp_path / 'RTE' / 'dev.tsv').write_bytes(RTE_HEADER.encode() + b'0\ta \xff\tb\tentailment\n')
    with pytest.raises(UserError, match='dev.tsv: not UTF-8 text'):
        load_split(TASKS['rte'], 'dev', str(tmp_path))


def test_byte_order_mark_and_quotes_are_read_as_text(tmp_path):
    mrpc = ('\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
            '1\t1\t2\tHe said " hello .\t" Hello , " he said .\n')
    glue_dir = _glue_dir(tmp_path, 'MRPC', {'train.tsv': mrpc})
    ds = load_split(TASKS['mrpc'], 'train', glue_dir)
    assert ds[0] == {'text_a': 'He said " hello .', 'text_b': '" Hello , " he said .', 'label': 1, 'idx': 0}


# ---- the hub ----

HUB_COLUMNS = {
    'sst2': {'sentence': datasets.Value('string')},
    'mnli': {'premise': datasets.Value('string'), 'hypothesis': datasets.Value('string')},
    'stsb': {'sentence1': datasets.Value('string'), 'sentence2': datasets.Value('string')},
}


@pytest.mark.parametrize('name', list(HUB_COLUMNS))
def test_hub_split_has_the_same_schema_as_the_others(name, monkeypatch):
    task = TASKS[name]
    asked = []

    def fake_load_dataset(path, config, split):
        asked.append((path, config, split))
        texts = {key: [f'{key} one', f'{key} two'] for key in HUB_COLUMNS[name]}
        label = (datasets.Value('float32') if task.is_regression
                 else datasets.ClassLabel(names=list(task.labels)))
        features = datasets.Features({**HUB_COLUMNS[name], 'label': label, 'idx': datasets.Value('int32')})
        return datasets.Dataset.from_dict({**texts, 'label': [1, 0], 'idx': [0, 1]}, features=features)

    monkeypatch.setattr(datasets, 'load_dataset', fake_load_dataset)
    monkeypatch.setattr(hub, 'unreachable', lambda: None)   # the probe is not what this test is about
    ds = load_split(task, 'dev', HUB)
    assert asked == [('nyu-mll/glue', name, task.dev_split)]
    assert ds.features == load_split(task, 'dev', SAMPLES).features
    first, second = task.text_keys
    assert ds[0] == {'text_a': f'{first} one', 'text_b': f'{second} one' if second else '', 'label': 1, 'idx': 0}


# ---- tokens and batches ----

def test_tokenize_and_pad_per_batch(tokenizer, tmp_path):
    ds = tokenize(load_split(TASKS['sst2'], 'train', SAMPLES), tokenizer, 128, tmp_path)
    assert ds.column_names == ['input_ids', 'attention_mask', 'token_type_ids', 'labels']
    assert ds[0]['input_ids'][0] == tokenizer.cls_token_id
    assert ds[0]['input_ids'].count(tokenizer.sep_token_id) == 1      # one sentence, one [SEP]
    lengths = set()
    for batch in make_loader(ds, tokenizer, batch_size=8, shuffle=False, seed=0):
        assert set(batch) == {'input_ids', 'attention_mask', 'token_type_ids', 'labels'}
        assert batch['input_ids'].shape == batch['attention_mask'].shape == batch['token_type_ids'].shape
        assert batch['labels'].dtype == torch.int64
        # padded to the longest example of this batch, not to max_length
        assert batch['attention_mask'].sum(dim=1).max() == batch['input_ids'].shape[1]
        lengths.add(batch['input_ids'].shape[1])
    assert len(lengths) > 1


def test_pairs_are_truncated_and_sts_b_labels_stay_floats(tokenizer):
    ds = tokenize(load_split(TASKS['stsb'], 'dev', SAMPLES), tokenizer, 12, None)
    first = ds[0]
    assert len(first['input_ids']) == 12
    assert first['input_ids'].count(tokenizer.sep_token_id) == 2
    assert set(first['token_type_ids']) == {0, 1}
    batch = next(iter(make_loader(ds, tokenizer, batch_size=4, shuffle=False, seed=0)))
    assert batch['labels'].dtype == torch.float32


def test_fixed_padding_when_asked(tokenizer):
    ds = tokenize(load_split(TASKS['cola'], 'dev', SAMPLES), tokenizer, 32, None)
    shapes = {tuple(batch['input_ids'].shape) for batch in make_loader(ds, tokenizer, 40, False, 0, pad_to=32)}
    assert shapes == {(40, 32)}


def test_shuffle_follows_the_seed(tokenizer):
    ds = tokenize(load_split(TASKS['rte'], 'dev', SAMPLES), tokenizer, 64, None)

    def first_batch(seed):
        return next(iter(make_loader(ds, tokenizer, batch_size=16, shuffle=True, seed=seed)))['input_ids']
    assert first_batch(1).tolist() == first_batch(1).tolist()
    assert first_batch(1).tolist() != first_batch(2).tolist()


def test_tokenized_data_is_cached(tokenizer, tmp_path, monkeypatch):
    ds = load_split(TASKS['mrpc'], 'dev', SAMPLES)
    first = tokenize(ds, tokenizer, 32, tmp_path)
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith('.')     # no temporary directory left

    def no_mapping(*args, **kwargs):
        raise AssertionError('tokenized again instead of reading the cache')
    monkeypatch.setattr(datasets.Dataset, 'map', no_mapping)
    again = tokenize(load_split(TASKS['mrpc'], 'dev', SAMPLES), tokenizer, 32, tmp_path)
    assert again['input_ids'] == first['input_ids']
    monkeypatch.undo()

    tokenize(ds, tokenizer, 16, tmp_path)                                     # another max_length
    lowercase_off = BertTokenizerFast(vocab=str(VOCAB), do_lower_case=False)  # another tokenizer
    tokenize(ds, lowercase_off, 32, tmp_path)
    assert len(list(tmp_path.iterdir())) == 3
