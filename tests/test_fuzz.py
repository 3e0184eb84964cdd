"""Fuzzing the two readers of user files: for any input, data or one UserError line, never a traceback."""
import tempfile
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import data
from harness.errors import UserError
from harness.gridconfig import load_grid
from harness.tasks import STSB_MAX_SCORE, TASKS

# moderate: the suite stays quick, and every run draws new examples
FUZZ = settings(max_examples=150, deadline=None)

CELLS = st.one_of(st.sampled_from(["0", "1", "2", "entailment", "not_entailment", "neutral", "contradiction",
                                   "3.5", "-1", "nan", "", " ", "a b", "\"", "\r", "\0", "\ufeff"]),
                  st.text(max_size=8))
ROWS = st.lists(st.lists(CELLS, min_size=1, max_size=7), max_size=6)
TSV = st.one_of(st.binary(max_size=300),
                ROWS.map(lambda rows: "\n".join("\t".join(r) for r in rows).encode("utf-8", "surrogatepass")))


def one_line(err: UserError) -> None:
    assert str(err) and "\n" not in str(err), repr(str(err))


@FUZZ
@given(task=st.sampled_from(list(TASKS.values())), content=TSV)
def test_tsv_reader_gives_checked_columns_or_one_line(task, content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train.tsv"
        path.write_bytes(content)
        try:
            columns = data._read_tsv(task, path)
        except UserError as err:
            one_line(err)
            return
    labels = columns["label"]
    assert labels and len(columns["text_a"]) == len(columns["text_b"]) == len(labels)
    assert not any("\0" in t for t in columns["text_a"] + columns["text_b"])
    if task.is_regression:
        assert all(0.0 <= x <= STSB_MAX_SCORE for x in labels)
    else:
        assert all(x in range(task.num_labels) for x in labels)


# the keys of a grid file and of a methods[] entry, and a few settings and a stranger
KEYS = ["name", "description", "model", "glue_dir", "seeds", "tasks", "run", "methods", "task_overrides", "tables",
        "plugins", "method", "sparsity", "settings", "batch_size", "p0", "eval_steps", "x"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(), st.text(max_size=6),
                    st.sampled_from(["rte", "stsb", "spd", "dense", "theseus", "tiny", "samples", "0.5", "1e-3"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.sampled_from(KEYS), SCALARS), inner, max_size=4)),
    max_leaves=12)
VALID = {"name": "g", "model": "tiny", "glue_dir": "samples", "seeds": [1], "tasks": ["rte"],
         "methods": [{"method": "spd", "sparsity": 0.5}]}
# near-valid grids reach the deeper checks; arbitrary mappings and text test the shape checks
GRIDS = st.one_of(
    st.builds(lambda key, value: {**VALID, key: value}, st.sampled_from(KEYS), VALUES),
    st.builds(lambda key, value: {**VALID, "methods": [{**VALID["methods"][0], key: value}]},
              st.sampled_from(KEYS), VALUES),
    st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6).map(lambda d: yaml.safe_dump(d)),
    st.text(max_size=120))


@FUZZ
@given(grid=GRIDS)
def test_grid_loader_gives_cells_or_one_line(grid):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "g.yaml"
        path.write_text(grid if isinstance(grid, str) else yaml.safe_dump(grid), encoding="utf-8",
                        errors="surrogatepass")
        try:
            loaded = load_grid(path)
        except UserError as err:
            one_line(err)
            return
    assert loaded.cells and all(len(c.key) == 10 for c in loaded.cells)


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=80))
def test_duplicate_keys_are_never_silently_merged(text):
    # whatever the value, a key given twice is refused: PyYAML alone keeps the last one
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "g.yaml"
        path.write_text(yaml.safe_dump(VALID) + yaml.safe_dump({"tasks": [text]}), encoding="utf-8",
                        errors="surrogatepass")
        try:
            load_grid(path)
        except UserError as err:
            one_line(err)
            assert "duplicate key 'tasks'" in str(err)
        else:
            raise AssertionError("a duplicate key was accepted")
