"""The machinery under tandem.core.config: validated frozen dataclasses and one readable error per mistake.

Every config section is a pydantic dataclass, so a recipe, a `dataclasses.replace` from a CLI flag
and a direct construction in code all pass the same type, range and choice checks, and a failure
is one ValueError whose lines each name the key path, the value given and what is allowed.
"""

from __future__ import annotations

import difflib
import functools
import typing
from dataclasses import fields, is_dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

# Refuse unknown keys; never coerce a number to a string (a recipe's `salt: 123` must be quoted).
SECTION_CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=False)


def _no_bool(value: Any) -> Any:
    # pydantic's lax mode reads true as 1; in a recipe a boolean where a number belongs is a mistake.
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not a number")
    return value


def as_tuple(value: Any) -> Any:
    # A lone scalar where a list belongs (`click_events: buy`) is the one-element list it plainly means.
    return (value,) if isinstance(value, (str, int, float)) else value


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
Positive = Annotated[Int, Field(ge=1)]
NonNegative = Annotated[Int, Field(ge=0)]
NonNegFloat = Annotated[Float, Field(ge=0)]
OpenFraction = Annotated[Float, Field(gt=0, lt=1)]
Fraction = Annotated[Float, Field(ge=0, lt=1)]
Names = Annotated[tuple[str, ...], BeforeValidator(as_tuple)]


def _guards(value):
    """GateConfig.guards from a YAML mapping {metric: drop}, [[metric, drop], ...] or the tuple form."""
    entries = value.items() if isinstance(value, dict) else value
    if not isinstance(entries, (list, tuple, type({}.items()))):
        raise ValueError(f"{value!r} is not a mapping of metric -> allowed drop, e.g. {{'mrr@10': 0.01}}")
    guards = []
    for pair in entries:
        if isinstance(pair, dict):  # a list of one-entry mappings, e.g. from `- mrr@10: 0.01`
            guards.extend(_guards(pair))
            continue
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], str) or not pair[0]:
            raise ValueError(f"{pair!r} is not a (metric, allowed drop) pair, e.g. {{'mrr@10': 0.01}}")
        try:
            drop = float(_no_bool(pair[1]))
        except (TypeError, ValueError):
            raise ValueError(f"allowed drop {pair[1]!r} of {pair[0]!r} is not a number") from None
        if not drop >= 0:
            raise ValueError(f"allowed drop of {pair[0]!r} must be >= 0, got {pair[1]!r}")
        guards.append((pair[0], drop))
    return tuple(guards)


# YAML gives guards as a mapping {metric: allowed drop}; code and JSON as (metric, drop) pairs.
Guards = Annotated[tuple[tuple[str, NonNegFloat], ...], BeforeValidator(_guards)]


def section(name: str):
    """Decorator: a frozen pydantic dataclass whose construction errors (also from `replace`) read
    `name.key: what is wrong` instead of pydantic's report."""

    def wrap(cls):
        cls = pydantic_dataclass(frozen=True, config=SECTION_CONFIG)(cls)
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            try:
                init(self, *args, **kwargs)
            except ValidationError as err:
                raise ValueError(describe(err, cls, prefix=name)) from None

        cls.__init__ = __init__
        return cls

    return wrap


def choices(annotation) -> tuple:
    """The values a Literal annotation (possibly inside Annotated) allows; () for other types."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else ()


def _annotation(root, loc: tuple) -> Any:
    """The type annotation at a validation error's location, walking dataclass fields and tuple items."""
    annotation: Any = root
    for part in loc:
        while typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
        if isinstance(part, int):
            args = typing.get_args(annotation)
            annotation = args[0] if args else None
        elif isinstance(annotation, type) and is_dataclass(annotation):
            annotation = typing.get_type_hints(annotation, include_extras=True).get(part)
        else:
            return None
    return annotation


def _known(root, loc: tuple) -> list[str]:
    parent = _annotation(root, loc[:-1])
    return [f.name for f in fields(parent)] if isinstance(parent, type) and is_dataclass(parent) else []


def _message(error: dict, root, loc: tuple) -> str:
    kind, given, ctx = error["type"], error["input"], error.get("ctx") or {}
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        known = _known(root, loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"unknown setting; {hint}known: {', '.join(known)}"
    if kind == "literal_error":
        allowed = choices(_annotation(root, loc)) or (ctx.get("expected", "?"),)
        return f"{given!r} is not one of {', '.join(map(str, allowed))}"
    if kind in ("dataclass_type", "dict_type", "model_type", "dataclass_args_type"):
        return f"expected a mapping of settings, got {given!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"{given!r} is not a boolean; write true or false (without quotes)"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{given!r} is not an integer"
    if kind in ("float_type", "float_parsing"):
        return f"{given!r} is not a number"
    if kind == "string_type":
        return f"{given!r} is not a string (quote it in YAML)"
    if kind in ("tuple_type", "list_type"):
        return f"{given!r} is not a list"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"{given!r} is out of range: must be {bounds[kind]} {limit}"
    if kind in ("too_short", "too_long"):
        return f"{given!r} must hold between {ctx.get('min_length', 0)} and {ctx.get('max_length', 'any')} entries"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{given!r}: {error['msg']}"


def describe(err: ValidationError, root, where: str = "", prefix: str = "") -> str:
    """One line per mistake: `where: section.key: what is wrong`; cross-field checks already name their keys."""
    lines = []
    for error in err.errors():
        loc = tuple(error["loc"])
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in (prefix, *loc) if p != "").lstrip(".")
        message = _message(error, root, loc)
        cross_field = error["type"] == "value_error" and message.startswith(f"{path}")
        head = [where] if where else []
        lines.append(": ".join([*head, message] if cross_field or not path else [*head, path, message]))
    return "\n".join(lines)


# The enumerations: one Literal each, and its tuple of values for help texts and CLI choices.
Family = Literal["hotelmatch", "notellm2"]
PairMode = Literal["sequential", "basket"]
Follow = Literal["window", "session", "next_k"]
ItemPooling = Literal["auto", "mean", "last"]
Connector = Literal["qformer", "mlp"]
Prompt = Literal["micl", "basic"]
MixedPrecision = Literal["auto", "bf16", "no"]
Protocol = Literal["auto", "hotelmatch", "notellm2"]
Baseline = Literal["untrained", "popularity", "bm25", "cooccurrence"]
# Milvus dense index types; the first six also survive a reload in Milvus Lite (STACK.md).
IndexType = Literal["HNSW", "HNSW_SQ", "FLAT", "IVF_FLAT", "IVF_SQ8", "AUTOINDEX", "DISKANN", "IVF_PQ", "SCANN"]
Metric = Literal["COSINE", "IP", "L2"]
QueryEncoder = Literal["torch", "onnx-int8", "onnx-fp32"]

# The values that code outside the schema lists (CLI choices, messages); `choices(T)` gives any other's.
FAMILIES = typing.get_args(Family)
PAIR_MODES = typing.get_args(PairMode)
FOLLOWS = typing.get_args(Follow)
PROTOCOLS = typing.get_args(Protocol)
INDEX_TYPES = typing.get_args(IndexType)
QUERY_ENCODERS = typing.get_args(QueryEncoder)
