"""Named events: notifications a service publishes under a name of their own.

``proxy.publish_event("order_placed", order_id=1)`` (or an
:class:`~tavrida.client.RPCClient`'s ``publish_event``) publishes on the
service's notification exchange (its local publisher) with routing key and
source ``<service>.<event>``: a subscriber takes it with
``subscription_method(service="orders", method="order_placed")``, a 1.0
subscriber by binding a queue to ``orders.order_placed``. The event name is
the first argument, positional only, so every keyword is payload.
``proxy.publish(**payload)`` keeps 1.0's meaning: the event is named after
the publishing handler.

A handler may declare what it publishes, ``publishes=("order_placed",)`` or
``publishes={"order_placed": OrderPlaced}`` (the payload's type), for the
AsyncAPI document (:mod:`tavrida.asyncapi`); nothing checks it at run time.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from tavrida import exceptions

#: What ``publishes=`` takes: event names, or event names with their payload types.
Publishes = Union[str, Sequence[str], Mapping[str, Any]]


def check_name(event: Any) -> str:
    """``event``, checked: a non-empty name without dots; WrongEntryPointFormat else."""
    if not isinstance(event, str) or not event or "." in event:
        raise exceptions.WrongEntryPointFormat(value=event)
    return event


def declared(publishes: Optional[Publishes]) -> Dict[str, Any]:
    """Event name -> payload type (``Any`` when not given) of a ``publishes=`` value."""
    if not publishes:
        return {}
    if isinstance(publishes, str):
        return {check_name(publishes): Any}
    if isinstance(publishes, Mapping):
        return {check_name(name): tp for name, tp in publishes.items()}
    return {check_name(name): Any for name in publishes}


def cli_target(target: str, params: List[str]) -> Tuple[str, str, List[str]]:
    """Service, event and payload pairs of ``tavrida publish SERVICE EVENT k=v`` or
    ``tavrida publish SERVICE.EVENT k=v``; ValueError when neither form."""
    service, dot, event = target.partition(".")
    if not dot and params and "=" not in params[0]:
        event, params = params[0], params[1:]
    if not service or not event or "." in event:
        raise ValueError(f"{target!r} is not SERVICE EVENT (or SERVICE.EVENT)")
    return service, check_name(event), params
