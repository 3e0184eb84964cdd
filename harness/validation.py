"""The one validation layer: run settings, method settings and grid files are checked here, with pydantic.

Settings are plain stdlib dataclasses (RunConfig, and the settings class each method or plugin declares);
their annotations are the schema. Bounds go into the annotation, where pydantic reads them and the
dataclass ignores them:

    batch_size: Annotated[int, Field(ge=1)] = 32

`check_fields` validates some or all fields of such a class (a grid's `run:` section is a partial one),
`build` makes an instance. Values keep the lax coercion a command line needs ('2e-3' -> 0.002, 3 -> 3.0,
'true' -> True), but a bool is not a number and NaN/inf are not numbers either. Every problem is one
`UserError` line that names the setting and where it came from, e.g.

    configs/x.yaml: methods[0].sparsity: must be a number in [0, 1), got 'abc'

Grid files are a pydantic model (harness/gridconfig.py); `model_error` turns its first error into the
same kind of line.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from harness.errors import UserError

# The bounds the settings classes share (RunConfig, the methods'), for their annotations.
Positive = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Rate = Annotated[float, Field(gt=0)]                 # learning rates, temperatures, a stage that must train
NonNegative = Annotated[float, Field(ge=0)]          # e.g. a stage that may be left out (0 epochs)
Probability = Annotated[float, Field(ge=0, le=1)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Device = Annotated[str, Field(pattern=r"^(cpu|cuda(:[0-9]+)?)$")]   # whether it exists here: models.pick_device

# NaN or inf in a learning rate or a sparsity is a mistake, never a setting.
_CONFIG = ConfigDict(allow_inf_nan=False)
_TYPE_NAMES = {float: "a number", int: "a whole number", bool: "true or false", str: "text",
               dict: "a mapping", list: "a list"}


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation, Annotated metadata included (a plugin's module may use
    `from __future__ import annotations`, which leaves strings)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@functools.lru_cache(maxsize=None)
def _adapter(hint) -> TypeAdapter:
    return TypeAdapter(hint, config=_CONFIG)


def _split(hint) -> tuple[list, list]:
    """(alternatives, constraints) of an annotation: Optional[Annotated[float, Field(ge=0)]] ->
    ([float, None], [Ge(ge=0)])."""
    constraints = []
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        for extra in extras:
            constraints += getattr(extra, "metadata", [extra])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = []
        for arg in typing.get_args(hint):
            inner, more = _split(arg)
            kinds += inner
            constraints += more
        return kinds, constraints
    return [None if hint is type(None) else hint], constraints


def _bounds(constraints) -> str:
    low = next(((">=", c.ge) for c in constraints if getattr(c, "ge", None) is not None), None) or \
        next(((">", c.gt) for c in constraints if getattr(c, "gt", None) is not None), None)
    high = next((("<=", c.le) for c in constraints if getattr(c, "le", None) is not None), None) or \
        next((("<", c.lt) for c in constraints if getattr(c, "lt", None) is not None), None)
    if low and high:
        return f" in {'[' if low[0] == '>=' else '('}{low[1]:g}, {high[1]:g}{']' if high[0] == '<=' else ')'}"
    if low or high:
        op, value = low or high
        return f" {op} {value:g}"
    return ""


def describe(hint) -> str:
    """What a value of this annotation must be, in words: 'a number in [0, 1)', 'one of 'auto', 'bf16''."""
    kinds, constraints = _split(hint)
    words = []
    for kind in kinds:
        if kind is None:
            continue
        if typing.get_origin(kind) is Literal:
            words.append("one of " + ", ".join(repr(v) for v in typing.get_args(kind)))
        else:
            base = typing.get_origin(kind) or kind
            words.append(_TYPE_NAMES.get(base, getattr(base, "__name__", str(base))))
    text = " or ".join(words) + _bounds(constraints) + "".join(
        f" matching {c.pattern}" for c in constraints if getattr(c, "pattern", None))
    return text + (" or null" if None in kinds else "")


def check_value(hint, value, label: str):
    """`value` as the annotation `hint` wants it, or a UserError `label: must be ..., got ...`."""
    kinds, _ = _split(hint)
    bases = {typing.get_origin(k) or k for k in kinds}
    # pydantic's lax mode takes True as 1: for a number that is a typo, not a value
    ok = not (isinstance(value, bool) and bool not in bases and Any not in bases)
    if ok:
        try:
            return _adapter(hint).validate_python(value)
        except ValidationError:
            pass
    raise UserError(f"{label}: must be {describe(hint)}, got {value!r}")


def check_fields(cls: type, values: dict, where: str = "") -> dict:
    """`values` (some fields of the dataclass `cls`) validated; `where` prefixes every message
    ('configs/x.yaml: run.'). An unknown name lists the valid ones."""
    hints = _hints(cls)
    if not isinstance(values, dict):
        raise UserError(f"{where.rstrip('.: ') or 'settings'}: must be a mapping, got {values!r}")
    unknown = sorted(str(k) for k in values if k not in hints)
    if unknown:
        head = where.rstrip(".: ")
        raise UserError(f"{head + ': ' if head else ''}unknown setting{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(repr(u) for u in unknown)}; valid: {', '.join(sorted(hints))}")
    return {name: check_value(hints[name], value, f"{where}{name}") for name, value in values.items()}


def build(cls: type, values: dict, where: str = ""):
    """An instance of the dataclass `cls` from validated `values` (its __post_init__ checks run too)."""
    checked = check_fields(cls, values, where)
    head = where.rstrip(".: ")
    try:
        return cls(**checked)
    except TypeError as err:   # a required field without a value
        raise UserError(f"{head + ': ' if head else ''}{err}") from None
    except UserError as err:   # the class's own checks (__post_init__): say where the values came from
        raise UserError(f"{head + ': ' if head else ''}{err}") from None


def _loc(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_MESSAGES = {
    "float_parsing": "must be a number", "float_type": "must be a number", "finite_number": "must be a number",
    "int_parsing": "must be a whole number", "int_type": "must be a whole number",
    "int_from_float": "must be a whole number", "bool_parsing": "must be true or false",
    "bool_type": "must be true or false", "string_type": "must be text", "list_type": "must be a list",
    "dict_type": "must be a mapping", "model_type": "must be a mapping", "model_attributes_type": "must be a mapping",
    "missing": "is required", "too_short": "must not be empty",
}


def model_error(err: ValidationError, where: str, model: type[BaseModel]) -> UserError:
    """The first error of a pydantic model's validation as one line: `where: methods[0].tasks: must be a list,
    got 'rte'`."""
    first = err.errors(include_url=False)[0]
    loc, kind, ctx = first["loc"], first["type"], first.get("ctx") or {}
    if kind == "extra_forbidden":
        parent = model
        for part in loc[:-1]:   # the model the unknown key sits in, for its valid keys
            field = parent.model_fields.get(part) if isinstance(part, str) else None
            if field is not None:
                inner = [a for a in typing.get_args(field.annotation) or [field.annotation]
                         if isinstance(a, type) and issubclass(a, BaseModel)]
                parent = inner[0] if inner else parent
        inside = f"{_loc(loc[:-1])}: " if loc[:-1] else ""
        return UserError(f"{where}: {inside}unknown key {loc[-1]!r}; valid: {', '.join(parent.model_fields)}")
    if kind == "literal_error":
        message = f"must be {ctx['expected']}"
    elif kind in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than": "<", "less_than_equal": "<="}[kind]
        message = f"must be {op} {next(iter(ctx.values()))}"
    else:
        message = _MESSAGES.get(kind, first["msg"][:1].lower() + first["msg"][1:])
    got = "" if kind == "missing" else f", got {first['input']!r}"
    return UserError(f"{where}: {_loc(loc) or 'the file'}: {message}{got}")


class StrictModel(BaseModel):
    """A YAML section: unknown keys are errors, and an empty value (`run:` with nothing after it) is the
    field's default."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data):
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in data.items()
                if not (v is None and k in cls.model_fields and not cls.model_fields[k].is_required())}


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:    # an unhashable key: PyYAML's own check reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str):
    """YAML text as Python values; bad YAML and duplicate keys are one line naming `where` and the line."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 — a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{where}: not valid YAML{line}: {problem}") from None
