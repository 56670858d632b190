"""Types as message contracts: JSON values converted to annotated types, and their JSON Schema.

A handler parameter annotated with one of these types gets its payload value
checked and converted (see :mod:`tavrida.contracts`); the same types describe
the payloads of an AsyncAPI document (:mod:`tavrida.asyncapi`):

* the JSON types ``int``, ``float`` (an integer is taken too), ``str``,
  ``bool``, ``None``, checked, never coerced (``"1"`` is not an ``int``);
* ``list[X]``, ``tuple[X, ...]``, ``set[X]``, ``dict[str, X]``, ``Optional``,
  ``Union``, ``Literal``, an ``Enum`` (from its value), ``Annotated[X, ...]``;
* ``datetime``, ``date``, ``time`` from ISO 8601 text, ``UUID`` from its
  text, ``Decimal`` from text or a number;
* dataclasses and ``TypedDict`` from a JSON object (unknown keys dropped),
  and pydantic models when pydantic is installed.

``Any``, ``object`` and other annotations are not checked. :func:`converter`
compiles a type once into a function: the function returns the converted
value or raises :class:`Invalid` naming each offending field. :func:`jsonable`
is the reverse, the JSON encoder's fallback for these types, and
:class:`SchemaBuilder` writes the JSON Schema of a type.

The pieces: :mod:`tavrida.invalid` (:class:`Invalid`, :class:`Problem`),
:mod:`tavrida.converters` (the check of each kind of type) and
:mod:`tavrida.json_schema` (:class:`SchemaBuilder`); their names are
importable from here too.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import enum
import sys
import typing
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from tavrida.converters import LEAVES, enum_of, fixed_tuple, items, literal, mapping, union
from tavrida.invalid import _MISSING as _MISSING
from tavrida.invalid import Convert as Convert
from tavrida.invalid import Invalid as Invalid
from tavrida.invalid import Key as Key
from tavrida.invalid import Problem as Problem
from tavrida.invalid import describe as describe
from tavrida.invalid import type_name as type_name


def fields_of(cls: type, localns: Optional[Dict[str, Any]] = None
              ) -> List[Tuple[str, Any, bool]]:
    """(name, type, required) of a dataclass's init fields or a TypedDict's keys.

    ``localns``: names of the scope the class was declared in (a function's).
    Raises NameError when an annotation names nothing (yet).
    """
    try:
        hints = typing.get_type_hints(cls, localns=localns)
    except KeyError:  # Python 3.9: its module is not in sys.modules (loaded from a file)
        hints = typing.get_type_hints(cls, globalns={}, localns=localns)
    if dataclasses.is_dataclass(cls):
        return [(f.name, hints.get(f.name, Any),
                 f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                for f in dataclasses.fields(cls) if f.init]
    required = getattr(cls, "__required_keys__", frozenset(hints))
    return [(name, tp, name in required) for name, tp in hints.items()]


def _record(cls: type, make: Callable[[Dict[str, Any]], Any],
            localns: Optional[Dict[str, Any]]) -> Convert:
    # Registered before its fields compile, so that a type naming itself resolves.
    compiled: List[Tuple[str, Optional[Convert], bool, str]] = []
    expected = f"{cls.__name__} (an object)"
    dataclass = dataclasses.is_dataclass(cls)

    def convert(value: Any) -> Any:
        if dataclass and isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise Invalid.one(expected, value)
        kwargs: Dict[str, Any] = {}
        problems: List[Problem] = []
        for name, field, required, field_type in compiled:
            if name in value:
                try:
                    kwargs[name] = value[name] if field is None else field(value[name])
                except Invalid as exc:
                    problems.extend(exc.under(name))
            elif required:
                problems.append(Problem((name,), field_type))
        if problems:
            raise Invalid(problems)
        try:
            return make(kwargs)
        except (TypeError, ValueError) as exc:  # a __post_init__ that checks
            raise Invalid([Problem((), expected, reason=f"invalid {cls.__name__}: {exc}")]
                          ) from None

    _cache[cls] = convert
    try:
        for name, tp, required in fields_of(cls, localns):
            compiled.append((name, converter(tp, localns), required, type_name(tp)))
    except Exception:
        del _cache[cls]
        raise
    return convert


def _pydantic(cls: Any) -> Convert:
    validate = getattr(cls, "model_validate", None) or cls.parse_obj
    error = sys.modules["pydantic"].ValidationError

    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        try:
            return validate(value)
        except error as exc:
            raise Invalid([Problem(tuple(e.get("loc", ())), cls.__name__,
                                   reason=f"{e.get('msg', 'invalid')} (got "
                                          f"{describe(e.get('input', value))})")
                           for e in exc.errors()]) from None
    return convert


def is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__")


def is_pydantic(tp: Any) -> bool:
    pydantic = sys.modules.get("pydantic")  # imported by whoever annotates with a model
    return (pydantic is not None and isinstance(tp, type)
            and issubclass(tp, pydantic.BaseModel))


_cache: Dict[Any, Optional[Convert]] = {}
SEQUENCES = {list, collections.abc.Sequence, collections.abc.MutableSequence,
              collections.abc.Iterable, collections.abc.Collection}
SETS = {set, frozenset, collections.abc.Set, collections.abc.MutableSet}
MAPPINGS = {dict, collections.abc.Mapping, collections.abc.MutableMapping}


def union_args(tp: Any) -> Optional[Tuple[Any, ...]]:
    """The members of ``Union[...]``, ``Optional[...]`` or ``X | Y``; None for other types."""
    origin = typing.get_origin(tp)
    if origin is Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        return typing.get_args(tp)
    return None


def converter(tp: Any, localns: Optional[Dict[str, Any]] = None) -> Optional[Convert]:
    """The compiled conversion to ``tp``; None when ``tp`` is not checked (``Any``, unknown).

    ``localns`` resolves the names in dataclasses declared in a function.
    Raises NameError when a dataclass's annotation names nothing (yet).
    """
    try:
        return _cache[tp]
    except KeyError:
        built = _build(tp, localns)
        _cache.setdefault(tp, built)
        return built
    except TypeError:  # an unhashable annotation
        return _build(tp, localns)


def leaf_of(table: Dict[Any, Any], tp: Any) -> Any:
    """``table``'s entry for ``tp`` (None is NoneType), or None (also for an unhashable tp)."""
    try:
        return table.get(type(None) if tp is None else tp)
    except TypeError:
        return None


def _build(tp: Any, localns: Optional[Dict[str, Any]]) -> Optional[Convert]:
    leaf = leaf_of(LEAVES, tp)
    if leaf is not None:
        return leaf  # type: ignore[no-any-return]
    supertype = getattr(tp, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return converter(supertype, localns)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    name = type_name(tp)
    members = union_args(tp)
    if members is not None:
        nullable = type(None) in members
        others = [m for m in members if m is not type(None)]
        return union(name, [converter(m, localns) for m in others], nullable)
    if origin is typing.Annotated:
        return converter(args[0], localns)
    if origin is typing.Literal:
        return literal(args)
    if origin in SEQUENCES or tp in (list, collections.abc.Sequence):
        return items(list, name, converter(args[0], localns) if args else None, list)
    if origin in SETS or tp in (set, frozenset):
        kind = frozenset if frozenset in (origin, tp) else set
        return items(kind, name, converter(args[0], localns) if args else None, kind)
    if origin is tuple or tp is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return items(tuple, name, converter(args[0], localns) if args else None, tuple)
        return fixed_tuple(name, [converter(a, localns) for a in args])
    if origin in MAPPINGS or tp in (dict, collections.abc.Mapping):
        return mapping(name, converter(args[1], localns) if len(args) == 2 else None)
    if origin is not None or not isinstance(tp, type):
        return None  # another generic, a TypeVar, Any: not checked
    if issubclass(tp, enum.Enum):
        return enum_of(tp)
    if dataclasses.is_dataclass(tp):
        return _record(tp, lambda kwargs: tp(**kwargs), localns)
    if is_typeddict(tp):
        return _record(tp, dict, localns)
    if is_pydantic(tp):
        return _pydantic(tp)
    return None


def optional(convert: Convert) -> Convert:
    """``convert`` that also takes None (for a parameter whose default is None)."""
    def convert_or_none(value: Any) -> Any:
        return None if value is None else convert(value)
    return convert_or_none


# -- values to JSON -----------------------------------------------------------

#: Dataclass -> the names of its fields (what :func:`record_payload` writes), found once.
_FIELD_NAMES: Dict[type, Tuple[str, ...]] = {}


def record_payload(value: Any) -> Optional[Dict[str, Any]]:
    """A dataclass or pydantic model as the payload dict it is sent as; None for others."""
    cls = type(value)
    names = _FIELD_NAMES.get(cls)
    if names is None and dataclasses.is_dataclass(cls):
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    if names is not None:
        return {name: getattr(value, name) for name in names}
    if is_pydantic(cls):
        dump = getattr(value, "model_dump", None)  # pydantic 1 has dict()
        result: Dict[str, Any] = dump(mode="json") if dump is not None else value.dict()
        return result
    return None


def jsonable(value: Any) -> Any:
    """The JSON form of a value the encoder does not know (its ``default``); TypeError else.

    Datetimes, dates and times as ISO 8601 text, UUIDs as text, an Enum as
    its value, a dataclass or pydantic model as an object, a set as a list
    (``Decimal`` is written as a number by the encoder itself).
    """
    record = record_payload(value)
    if record is not None:
        return record
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def __getattr__(name: str) -> Any:
    """:class:`SchemaBuilder` and :data:`COMPONENTS`, from :mod:`tavrida.json_schema`."""
    if name in ("SchemaBuilder", "COMPONENTS"):
        from tavrida import json_schema

        return getattr(json_schema, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
