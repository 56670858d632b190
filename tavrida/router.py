"""The router: which local controller and handler take an incoming message.

* a request goes to the service named by its ``destination``, to the
  handler of that entry point;
* a response or error goes to the service named by its ``destination``
  (the caller), to the handler of its ``source`` (the remote entry point);
* a notification goes to every service subscribed to its ``source``.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple, Type

from tavrida import entry_point, exceptions, messages
from tavrida.dispatcher import Handler
from tavrida.service import ServiceController

Target = Tuple[ServiceController, Handler]


def check_service_classes(service_list: Iterable[type]) -> List[Type[ServiceController]]:
    """The service classes of a server, checked: declared controllers, one per name."""
    classes: List[Type[ServiceController]] = []
    names: Dict[str, Type[ServiceController]] = {}
    for cls in service_list:
        if not (isinstance(cls, type) and issubclass(cls, ServiceController)):
            raise exceptions.NeedToBeController(name=getattr(cls, "__qualname__", repr(cls)))
        name = cls.service_name()
        if not name:
            raise exceptions.ServiceIsNotRegister(
                service=f"{cls.__qualname__} (decorate it with dispatcher.rpc_service)")
        if name in names:
            raise exceptions.DuplicatedServiceRegistration(
                service=name, first=names[name].__qualname__, second=cls.__qualname__)
        names[name] = cls
        classes.append(cls)
    if not classes:
        raise exceptions.ServiceIsNotRegister(service="(none: service_list is empty)")
    return classes


class Router:
    """Finds the targets of incoming messages among a server's controllers."""

    def __init__(self, controllers: Iterable[ServiceController]) -> None:
        self.services: Dict[str, ServiceController] = {}
        self.subscribers: Dict[entry_point.EntryPoint, List[Target]] = {}
        for controller in controllers:
            self.services[controller.service_name()] = controller
            dispatcher = controller.get_dispatcher()
            for ep, handler in dispatcher.get_subscription_handlers():
                self.subscribers.setdefault(ep, []).append((controller, handler))

    def route(self, message: messages.Message) -> List[Target]:
        """Targets of ``message``; raises ServiceNotFound, HandlerNotFound or
        SubscriptionHandlerNotFound naming what is missing."""
        if message.message_type == messages.NOTIFICATION:
            targets = self.subscribers.get(message.source)
            if not targets:
                raise exceptions.SubscriptionHandlerNotFound(entry_point=message.source)
            return targets
        controller = self.services.get(message.destination.service)
        if controller is None:
            raise exceptions.ServiceNotFound(service=message.destination.service or "''")
        if message.message_type == messages.REQUEST:
            ep = message.destination
        else:
            ep = message.source
        handler = controller.get_dispatcher().find(ep, message.message_type)
        if handler is None:
            raise exceptions.HandlerNotFound(message_type=message.message_type, entry_point=ep)
        return [(controller, handler)]
