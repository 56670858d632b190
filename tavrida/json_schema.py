"""JSON Schemas of types: what :mod:`tavrida.schema` converts, as a schema says it."""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import decimal
import enum
import typing
import uuid
from typing import Any, Dict, List, Optional, Tuple

from tavrida.schema import (
    MAPPINGS,
    SEQUENCES,
    SETS,
    fields_of,
    is_pydantic,
    is_typeddict,
    leaf_of,
    union_args,
)

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
        leaf = leaf_of(_LEAF_SCHEMAS, tp)
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
        if origin in SEQUENCES or origin in SETS or tp in (list, set, frozenset):
            schema: Dict[str, Any] = {"type": "array"}
            if args:
                schema["items"] = self.schema(args[0])
            if origin in SETS or tp in (set, frozenset):
                schema["uniqueItems"] = True
            return schema
        if origin is tuple or tp is tuple:
            if not args or (len(args) == 2 and args[1] is Ellipsis):
                return {"type": "array", "items": self.schema(args[0])} if args else \
                    {"type": "array"}
            return {"type": "array", "items": [self.schema(a) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        if origin in MAPPINGS or tp in (dict, collections.abc.Mapping):
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
