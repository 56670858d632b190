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

Why one module of over 400 lines: what a type takes, how it is written back
and what its JSON Schema says are three readings of one table of types;
apart, a type added to one would be missing from the others.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import decimal
import enum
import reprlib
import sys
import typing
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

#: A compiled conversion: the converted value, or :class:`Invalid`.
Convert = Callable[[Any], Any]
Key = Union[str, int]

_MISSING = object()
_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40


class Problem:
    """One offending value: where (``order.items[2].qty``), what was expected, what came."""

    __slots__ = ("path", "expected", "got", "reason")

    def __init__(self, path: Tuple[Key, ...], expected: str, got: Any = _MISSING,
                 reason: str = "") -> None:
        self.path = path
        self.expected = expected
        self.got = got
        self.reason = reason

    def under(self, key: Key) -> Problem:
        return Problem((key,) + self.path, self.expected, self.got, self.reason)

    @property
    def where(self) -> str:
        text = ""
        for key in self.path:
            text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
        return text

    def __str__(self) -> str:
        if self.reason:
            what = self.reason
        elif self.got is _MISSING:
            what = f"missing (expected {self.expected})"
        else:
            what = f"expected {self.expected}, got {describe(self.got)}"
        return f"{self.where}: {what}" if self.path else what


class Invalid(Exception):
    """Values that do not match their types; ``problems`` names each."""

    def __init__(self, problems: List[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems

    @classmethod
    def one(cls, expected: str, got: Any) -> Invalid:
        return cls([Problem((), expected, got)])

    def under(self, key: Key) -> List[Problem]:
        """The problems, located under ``key`` of the enclosing value."""
        return [problem.under(key) for problem in self.problems]


def describe(value: Any) -> str:
    """``str 'abc'``, ``int 5``, ``None``: a value as an error message shows it."""
    if value is None:
        return "None"
    return f"{type(value).__name__} {_repr.repr(value)}"


def type_name(tp: Any) -> str:
    """A type as error messages and schemas name it (``list[int]``, ``Optional[Order]``)."""
    if tp is type(None) or tp is None:
        return "None"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "").replace("datetime.", "").replace("uuid.", "")


# -- converters ---------------------------------------------------------------

def _none(value: Any) -> Any:
    if value is None:
        return None
    raise Invalid.one("None", value)


def _int(value: Any) -> Any:
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise Invalid.one("int", value)


def _float(value: Any) -> Any:
    if type(value) is float:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise Invalid.one("float", value)


def _str(value: Any) -> Any:
    if isinstance(value, str):
        return value
    raise Invalid.one("str", value)


def _bool(value: Any) -> Any:
    if value is True or value is False:
        return value
    raise Invalid.one("bool", value)


def _parsed(expected: str, kind: type, parse: Callable[[str], Any]) -> Convert:
    def convert(value: Any) -> Any:
        if isinstance(value, kind):
            return value
        if isinstance(value, str):
            try:
                return parse(value)
            except ValueError:
                pass
        raise Invalid.one(expected, value)
    return convert


def _iso_datetime(text: str) -> datetime.datetime:
    # Python before 3.11 reads no "Z" suffix; JSON writers often put one.
    return datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def _decimal(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return value
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            number = decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            number = decimal.Decimal("NaN")
        if number.is_finite():
            return number
    raise Invalid.one("Decimal (a number or its text)", value)


_LEAVES: Dict[Any, Convert] = {
    int: _int, float: _float, str: _str, bool: _bool, type(None): _none,
    datetime.datetime: _parsed("datetime (ISO 8601 text)", datetime.datetime, _iso_datetime),
    datetime.date: _parsed("date (ISO 8601 text)", datetime.date, datetime.date.fromisoformat),
    datetime.time: _parsed("time (ISO 8601 text)", datetime.time, datetime.time.fromisoformat),
    uuid.UUID: _parsed("UUID (its text)", uuid.UUID, uuid.UUID),
    decimal.Decimal: _decimal,
}


def _items(kind: type, name: str, item: Optional[Convert], make: Callable[[Any], Any]) -> Convert:
    def convert(value: Any) -> Any:
        element: Any
        items: Any = value
        if type(value) is not list and not isinstance(value, kind):
            raise Invalid.one(name, value)
        if item is None:
            return value if type(value) is kind else make(value)
        out = []
        problems: List[Problem] = []
        for index, element in enumerate(items):
            try:
                out.append(item(element))
            except Invalid as exc:
                problems.extend(exc.under(index))
        if problems:
            raise Invalid(problems)
        return make(out)
    return convert


def _fixed_tuple(name: str, items: List[Optional[Convert]]) -> Convert:
    def convert(value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise Invalid.one(name, value)
        out = []
        problems: List[Problem] = []
        for index, (element, item) in enumerate(zip(value, items)):
            try:
                out.append(element if item is None else item(element))
            except Invalid as exc:
                problems.extend(exc.under(index))
        if problems:
            raise Invalid(problems)
        return tuple(out)
    return convert


def _mapping(name: str, item: Optional[Convert]) -> Convert:
    def convert(value: Any) -> Any:
        if not isinstance(value, dict):
            raise Invalid.one(name, value)
        if item is None:
            return value
        out = {}
        problems: List[Problem] = []
        for key, element in value.items():
            try:
                out[key] = item(element)
            except Invalid as exc:
                problems.extend(exc.under(key))
        if problems:
            raise Invalid(problems)
        return out
    return convert


def _union(name: str, members: List[Optional[Convert]], nullable: bool) -> Convert:
    if any(member is None for member in members):
        return lambda value: value  # one member takes anything
    checked = [member for member in members if member is not None]

    def convert(value: Any) -> Any:
        if value is None and nullable:
            return None
        problems: List[Problem] = []
        for member in checked:
            try:
                return member(value)
            except Invalid as exc:
                problems.extend(exc.problems)
        if len(checked) == 1:
            raise Invalid(problems)  # Optional[X]: what is wrong inside X
        raise Invalid.one(name, value)
    return convert


def _literal(values: Tuple[Any, ...]) -> Convert:
    expected = "one of " + ", ".join(repr(v) for v in values)

    def convert(value: Any) -> Any:
        for allowed in values:
            if value == allowed and type(value) is type(allowed):
                return allowed
        raise Invalid.one(expected, value)
    return convert


def _enum(cls: type) -> Convert:
    members: List[Any] = list(cls)  # type: ignore[call-overload]
    expected = f"{cls.__name__} (one of {', '.join(repr(m.value) for m in members)})"
    by_value = {(type(m.value), m.value): m for m in members}

    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        try:
            return by_value[(type(value), value)]
        except (KeyError, TypeError):
            raise Invalid.one(expected, value) from None
    return convert


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
_SEQUENCES = {list, collections.abc.Sequence, collections.abc.MutableSequence,
              collections.abc.Iterable, collections.abc.Collection}
_SETS = {set, frozenset, collections.abc.Set, collections.abc.MutableSet}
_MAPPINGS = {dict, collections.abc.Mapping, collections.abc.MutableMapping}


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


def _leaf(table: Dict[Any, Any], tp: Any) -> Any:
    """``table``'s entry for ``tp`` (None is NoneType), or None (also for an unhashable tp)."""
    try:
        return table.get(type(None) if tp is None else tp)
    except TypeError:
        return None


def _build(tp: Any, localns: Optional[Dict[str, Any]]) -> Optional[Convert]:
    leaf = _leaf(_LEAVES, tp)
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
        return _union(name, [converter(m, localns) for m in others], nullable)
    if origin is typing.Annotated:
        return converter(args[0], localns)
    if origin is typing.Literal:
        return _literal(args)
    if origin in _SEQUENCES or tp in (list, collections.abc.Sequence):
        return _items(list, name, converter(args[0], localns) if args else None, list)
    if origin in _SETS or tp in (set, frozenset):
        kind = frozenset if frozenset in (origin, tp) else set
        return _items(kind, name, converter(args[0], localns) if args else None, kind)
    if origin is tuple or tp is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return _items(tuple, name, converter(args[0], localns) if args else None, tuple)
        return _fixed_tuple(name, [converter(a, localns) for a in args])
    if origin in _MAPPINGS or tp in (dict, collections.abc.Mapping):
        return _mapping(name, converter(args[1], localns) if len(args) == 2 else None)
    if origin is not None or not isinstance(tp, type):
        return None  # another generic, a TypeVar, Any: not checked
    if issubclass(tp, enum.Enum):
        return _enum(tp)
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


# -- JSON Schema --------------------------------------------------------------

#: Where :class:`SchemaBuilder` puts named schemas by default (an AsyncAPI document's).
COMPONENTS = "#/components/schemas/"

_LEAF_SCHEMAS: Dict[Any, Dict[str, Any]] = {
    int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"},
    bool: {"type": "boolean"}, type(None): {"type": "null"},
    datetime.datetime: {"type": "string", "format": "date-time"},
    datetime.date: {"type": "string", "format": "date"},
    datetime.time: {"type": "string", "format": "time"},
    uuid.UUID: {"type": "string", "format": "uuid"},
    decimal.Decimal: {"type": ["number", "string"], "format": "decimal"},
}


class SchemaBuilder:
    """JSON Schemas of types; dataclasses, TypedDicts, enums and models become named ones.

    A named schema is written once into :attr:`definitions` and referred to
    as ``{"$ref": ref_prefix + name}`` (two classes of one name get their
    module in the name).
    """

    def __init__(self, ref_prefix: str = COMPONENTS) -> None:
        self.ref_prefix = ref_prefix
        #: Names of the scope the next types were declared in (see :func:`fields_of`).
        self.localns: Optional[Dict[str, Any]] = None
        self.definitions: Dict[str, Any] = {}
        self._names: Dict[Any, str] = {}

    def schema(self, tp: Any) -> Dict[str, Any]:
        """The JSON Schema of values of ``tp`` (``{}``: anything)."""
        leaf = _leaf(_LEAF_SCHEMAS, tp)
        if leaf is not None:
            return dict(leaf)
        supertype = getattr(tp, "__supertype__", None)
        if supertype is not None:
            return self.schema(supertype)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        members = union_args(tp)
        if members is not None:
            return {"anyOf": [self.schema(m) for m in members]}
        if origin is typing.Annotated:
            return self.schema(args[0])
        if origin is typing.Literal:
            return {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
        if origin in _SEQUENCES or origin in _SETS or tp in (list, set, frozenset):
            schema: Dict[str, Any] = {"type": "array"}
            if args:
                schema["items"] = self.schema(args[0])
            if origin in _SETS or tp in (set, frozenset):
                schema["uniqueItems"] = True
            return schema
        if origin is tuple or tp is tuple:
            if not args or (len(args) == 2 and args[1] is Ellipsis):
                return {"type": "array", "items": self.schema(args[0])} if args else \
                    {"type": "array"}
            return {"type": "array", "items": [self.schema(a) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        if origin in _MAPPINGS or tp in (dict, collections.abc.Mapping):
            schema = {"type": "object"}
            if len(args) == 2:
                schema["additionalProperties"] = self.schema(args[1])
            return schema
        if origin is None and isinstance(tp, type) and (
                issubclass(tp, enum.Enum) or dataclasses.is_dataclass(tp) or is_typeddict(tp)
                or is_pydantic(tp)):
            return {"$ref": self.ref_prefix + self._named(tp)}
        return {}

    def _named(self, cls: type) -> str:
        name = self._names.get(cls)
        if name is not None:
            return name
        name = cls.__name__
        if name in self.definitions:
            name = f"{cls.__module__}.{cls.__qualname__}".replace("<", "").replace(">", "")
        self._names[cls] = name
        self.definitions[name] = {}  # taken before its fields: a type may name itself
        self.definitions[name] = self._definition(cls)
        return name

    def _definition(self, cls: Any) -> Dict[str, Any]:
        if issubclass(cls, enum.Enum):
            return {"title": cls.__name__, "enum": [m.value for m in cls]}
        if is_pydantic(cls):
            return self._pydantic(cls)
        return self.record(cls.__name__, fields_of(cls, self.localns), _doc(cls))

    def record(self, title: str, fields: List[Tuple[str, Any, bool]],
               description: str = "") -> Dict[str, Any]:
        """The schema of an object of ``fields`` ((name, type, required) each)."""
        schema: Dict[str, Any] = {"type": "object", "title": title,
                                  "properties": {name: self.schema(tp) for name, tp, _ in fields}}
        required = [name for name, _, needed in fields if needed]
        if required:
            schema["required"] = required
        if description:
            schema["description"] = description
        return schema

    def _pydantic(self, cls: Any) -> Dict[str, Any]:
        if not hasattr(cls, "model_json_schema"):
            return {"type": "object", "title": cls.__name__}  # pydantic 1: not described
        schema: Dict[str, Any] = cls.model_json_schema(ref_template=self.ref_prefix + "{model}")
        for name, definition in schema.pop("$defs", {}).items():
            self.definitions.setdefault(name, definition)
        return schema


def _doc(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    if dataclasses.is_dataclass(cls) and doc.startswith(f"{cls.__name__}("):
        return ""  # the signature dataclasses writes when there is no docstring
    if is_typeddict(cls) and doc.startswith("dict() -> new empty dictionary"):
        return ""
    return doc
