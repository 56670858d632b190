"""Handler contracts: annotated payload parameters, checked and converted before a handler runs.

::

    @dispatcher.rpc_method(service="orders", method="reserve")
    def reserve(self, request, proxy, item_id: int, until: datetime.date, order: Order):
        ...

A payload ``{"item_id": "abc", ...}`` never reaches ``reserve``: the caller
gets an Error naming each offending field (``item_id: expected int, got str
'abc'``), and ``until`` and ``order`` arrive as a ``date`` and an ``Order``
(the types are those of :mod:`tavrida.schema`). Parameters without an
annotation (or annotated ``Any``) are passed as they came.

A handler's converters are compiled once, when its service class is
declared; an annotation naming what is not defined yet (a class further
down the module, with ``from __future__ import annotations``) is resolved
at the handler's first message instead, and one that never resolves is
logged and left unchecked.
"""

from __future__ import annotations

import inspect
import logging
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tavrida import schema

LOG = logging.getLogger(__name__)


class _Annotations:
    """Holds one annotation for :func:`typing.get_type_hints` (which wants an object)."""

    def __init__(self, annotations: Dict[str, Any]) -> None:
        self.__annotations__ = annotations


def type_hints(func: Callable[..., Any], localns: Optional[Dict[str, Any]] = None
               ) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The resolved annotations of ``func``, and why each unresolved one is not."""
    try:
        return typing.get_type_hints(func, localns=localns), {}
    except Exception:  # noqa: BLE001 - resolved one by one below to name the culprit
        pass
    resolved: Dict[str, Any] = {}
    failed: Dict[str, str] = {}
    globalns = getattr(func, "__globals__", {})
    for name, annotation in getattr(func, "__annotations__", {}).items():
        try:
            resolved.update(typing.get_type_hints(_Annotations({name: annotation}),
                                                  globalns=globalns, localns=localns))
        except Exception as exc:  # noqa: BLE001 - NameError, TypeError (X | Y on 3.9)...
            failed[name] = f"{type(exc).__name__}: {exc}"
    return resolved, failed


class Contract:
    """The converters of one handler's annotated payload parameters.

    ``where`` names the handler in logs; ``localns`` holds the names of
    the scope its class was declared in (a function's, for a class declared
    inside one).
    """

    def __init__(self, where: str, func: Callable[..., Any],
                 params: Sequence[inspect.Parameter],
                 localns: Optional[Dict[str, Any]] = None) -> None:
        self.where = where
        self._func = func
        self._params = [p for p in params if p.annotation is not p.empty]
        self._localns = localns
        #: (parameter name, converter) of each checked parameter; None until compiled.
        self.fields: Optional[Tuple[Tuple[str, schema.Convert], ...]] = None
        self._compile(final=False)

    @classmethod
    def of(cls, where: str, func: Callable[..., Any], params: Sequence[inspect.Parameter],
           localns: Optional[Dict[str, Any]] = None) -> Optional[Contract]:
        """The contract of a handler; None when it checks nothing (no annotation to check)."""
        if all(p.annotation is p.empty for p in params):
            return None
        contract = cls(where, func, params, localns)
        return None if contract.fields == () else contract

    def _compile(self, final: bool) -> None:
        hints, failed = type_hints(self._func, self._localns)
        if failed and not final:
            return  # perhaps named further down the module: again at the first message
        fields: List[Tuple[str, schema.Convert]] = []
        for param in self._params:
            why = failed.get(param.name)
            convert = None
            if why is None:
                try:
                    convert = schema.converter(hints.get(param.name, Any), self._localns)
                except NameError as exc:
                    if not final:
                        return
                    why = f"NameError: {exc}"
            if why is not None:
                LOG.warning("%s: the annotation of parameter %s cannot be resolved (%s): "
                            "its values are not checked", self.where, param.name, why)
                continue
            if convert is None:
                continue
            if param.default is None:
                convert = schema.optional(convert)
            fields.append((param.name, convert))
        self.fields = tuple(fields)

    def convert(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """Convert the checked values of ``kwargs`` in place; raises :class:`schema.Invalid`."""
        fields = self.fields
        if fields is None:
            self._compile(final=True)
            fields = self.fields or ()
        problems: Optional[List[schema.Problem]] = None
        for name, convert in fields:
            if name in kwargs:
                try:
                    kwargs[name] = convert(kwargs[name])
                except schema.Invalid as exc:
                    if problems is None:
                        problems = []
                    problems.extend(exc.under(name))
        if problems:
            raise schema.Invalid(problems)
        return kwargs


def payload_fields(func: Callable[..., Any], params: Sequence[inspect.Parameter],
                   localns: Optional[Dict[str, Any]] = None) -> List[Tuple[str, Any, bool]]:
    """(name, type, required) of a handler's payload parameters (``Any`` where unannotated)."""
    hints, _ = type_hints(func, localns)
    return [(p.name, hints.get(p.name, Any) if p.annotation is not p.empty else Any,
             p.default is p.empty) for p in params]


def return_type(func: Callable[..., Any], localns: Optional[Dict[str, Any]] = None) -> Any:
    """What a handler's return annotation says it answers with (``Any`` when unsaid)."""
    if "return" not in getattr(func, "__annotations__", {}):
        return Any
    hints, _ = type_hints(func, localns)
    return hints.get("return", Any)
