"""Declaring services and handlers: what the decorators accept and refuse."""

from __future__ import annotations

import pytest

from tavrida import dispatcher, entry_point, exceptions, messages, service


def test_rpc_service_registers_every_kind_of_handler():
    @dispatcher.rpc_service("svc")
    class Controller(service.ServiceController):
        @dispatcher.rpc_method(service="svc", method="do")
        def do(self, request, proxy, param):
            pass

        @dispatcher.rpc_response_method(service="remote", method="call")
        def on_response(self, response, proxy, value):
            pass

        @dispatcher.rpc_error_method(service="remote", method="call")
        def on_error(self, error, proxy):
            pass

        @dispatcher.subscription_method(service="publisher", method="event")
        def on_event(self, notification, proxy, data):
            pass

    disp = Controller.get_dispatcher()
    assert Controller.service_name() == "svc"
    ep = entry_point.EntryPoint
    assert disp.get_handler(ep("svc", "do"), "request") == "do"
    assert disp.get_handler(ep("remote", "call"), "response") == "on_response"
    assert disp.get_handler(ep("remote", "call"), "error") == "on_error"
    assert disp.get_handler(ep("publisher", "event"), "notification") == "on_event"
    assert list(disp.get_request_entry_services()) == [ep("svc", "do")]
    assert disp.subscriptions == [ep("publisher", "event")]
    assert disp.handles_answers()


def test_one_method_may_handle_several_entry_points():
    @dispatcher.rpc_service("svc")
    class Controller(service.ServiceController):
        @dispatcher.rpc_method(service="svc", method="a")
        @dispatcher.rpc_method(service="svc", method="b")
        def both(self, request, proxy):
            pass

    disp = Controller.get_dispatcher()
    assert disp.get_handler(entry_point.EntryPoint("svc", "a"), "request") == "both"
    assert disp.get_handler(entry_point.EntryPoint("svc", "b"), "request") == "both"


def test_handlers_of_a_base_class_are_inherited():
    class Base(service.ServiceController):
        @dispatcher.rpc_method(service="child", method="inherited")
        def inherited(self, request, proxy):
            pass

    @dispatcher.rpc_service("child")
    class Child(Base):
        pass

    assert Child.get_dispatcher().get_handler(
        entry_point.EntryPoint("child", "inherited"), "request") == "inherited"


def test_non_controller_is_refused_naming_the_class():
    class NotAController:
        pass

    with pytest.raises(exceptions.NeedToBeController) as info:
        dispatcher.rpc_service("svc")(NotAController)
    assert "NotAController" in str(info.value)
    assert "ServiceController" in str(info.value)


def test_entry_point_registered_twice_names_both_methods():
    with pytest.raises(exceptions.DuplicatedEntryPointRegistration) as info:
        @dispatcher.rpc_service("svc")
        class Controller(service.ServiceController):
            @dispatcher.rpc_method(service="svc", method="do")
            def first_handler(self, request, proxy):
                pass

            @dispatcher.rpc_method(service="svc", method="do")
            def second_handler(self, request, proxy):
                pass

    text = str(info.value)
    assert "first_handler" in text and "second_handler" in text
    assert "svc.do" in text


def test_same_decorator_twice_on_one_method_is_refused():
    with pytest.raises(exceptions.DuplicatedMethodRegistration) as info:
        class Controller(service.ServiceController):
            @dispatcher.rpc_method(service="svc", method="do")
            @dispatcher.rpc_method(service="svc", method="do")
            def twice(self, request, proxy):
                pass
    assert "twice" in str(info.value)


def test_response_and_request_of_the_same_entry_point_do_not_clash():
    @dispatcher.rpc_service("svc")
    class Controller(service.ServiceController):
        @dispatcher.rpc_response_method(service="other", method="do")
        def on_response(self, response, proxy):
            pass

        @dispatcher.subscription_method(service="other", method="do")
        def on_event(self, notification, proxy):
            pass

    assert len(Controller.get_dispatcher().handlers) == 2


def test_request_handler_of_another_service_is_refused():
    with pytest.raises(exceptions.WrongHandlerParameters) as info:
        @dispatcher.rpc_service("svc")
        class Controller(service.ServiceController):
            @dispatcher.rpc_method(service="other", method="do")
            def do(self, request, proxy):
                pass
    assert "other.do" in str(info.value)


@pytest.mark.parametrize("signature", [
    "def on_error(self, error, proxy, extra): pass",
    "def on_error(self, error, proxy, **kwargs): pass",
    "def on_error(self, error): pass",
    "def on_error(self): pass",
])
def test_error_handler_takes_exactly_error_and_proxy(signature):
    namespace = {}
    exec(signature, namespace)  # noqa: S102 - build a method with this exact signature
    func = dispatcher.rpc_error_method(service="remote", method="call")(namespace["on_error"])
    controller = type("Controller", (service.ServiceController,), {"on_error": func})
    with pytest.raises(exceptions.WrongHandlerParameters) as info:
        dispatcher.rpc_service("svc")(controller)
    assert "on_error" in str(info.value)
    assert "remote.call" in str(info.value)


def test_error_handler_with_error_and_proxy_is_accepted():
    @dispatcher.rpc_service("svc")
    class Controller(service.ServiceController):
        @dispatcher.rpc_error_method(service="remote", method="call")
        def on_error(self, error, proxy):
            pass

    handler = Controller.get_dispatcher().find(entry_point.EntryPoint("remote", "call"),
                                               "error")
    # error payload keys never become arguments
    assert handler.arguments({"class": "x", "name": "y", "message": "z", "code": 1}) == {}


def test_handler_without_message_and_proxy_is_refused():
    with pytest.raises(exceptions.WrongHandlerParameters) as info:
        @dispatcher.rpc_service("svc")
        class Controller(service.ServiceController):
            @dispatcher.rpc_method(service="svc", method="do")
            def do(self):
                pass
    assert "(self, message, proxy, ...)" in str(info.value)


@pytest.mark.parametrize("decorator", [dispatcher.rpc_method, dispatcher.rpc_response_method,
                                       dispatcher.rpc_error_method,
                                       dispatcher.subscription_method])
@pytest.mark.parametrize("service_name, method", [("", "m"), ("s", ""), ("a.b", "m"),
                                                  ("s", "m.x")])
def test_method_decorators_refuse_bad_entry_points(decorator, service_name, method):
    with pytest.raises(exceptions.WrongEntryPointFormat):
        decorator(service=service_name, method=method)


@pytest.mark.parametrize("name", ["", "a.b", None])
def test_rpc_service_refuses_bad_names(name):
    with pytest.raises(exceptions.WrongEntryPointFormat):
        dispatcher.rpc_service(name)


class TestHandlerArguments:
    """Payload keys become keyword arguments, computed from the signature once."""

    def handler(self, func, message_type=messages.REQUEST):
        return dispatcher.Handler(func.__name__, message_type,
                                  entry_point.EntryPoint("svc", "do"), func)

    def test_extra_keys_are_dropped(self):
        def do(self, request, proxy, a, b=2):
            pass

        assert self.handler(do).arguments({"a": 1, "extra": 3}) == {"a": 1}
        assert self.handler(do).arguments({"a": 1, "b": 5}) == {"a": 1, "b": 5}

    def test_missing_key_is_an_error_naming_it(self):
        def do(self, request, proxy, alpha, beta, gamma=None):
            pass

        with pytest.raises(exceptions.WrongHandlerParameters) as info:
            self.handler(do).arguments({"beta": 1})
        assert "alpha" in str(info.value)
        assert "beta" not in str(info.value).split("parameter(s)")[1]
        assert "svc.do" in str(info.value)

    def test_keyword_only_parameters(self):
        def do(self, request, proxy, *, key):
            pass

        assert self.handler(do).arguments({"key": 1, "x": 2}) == {"key": 1}
        with pytest.raises(exceptions.WrongHandlerParameters):
            self.handler(do).arguments({})

    def test_var_keyword_takes_everything(self):
        def do(self, request, proxy, a, **rest):
            pass

        assert self.handler(do).arguments({"a": 1, "x": 2}) == {"a": 1, "x": 2}


def test_get_handler_raises_handler_not_found():
    disp = dispatcher.Dispatcher()
    with pytest.raises(exceptions.HandlerNotFound) as info:
        disp.get_handler(entry_point.EntryPoint("svc", "nothing"), "request")
    assert "svc.nothing" in str(info.value)
    assert disp.find(entry_point.EntryPoint("svc", "nothing"), "request") is None


def test_a_handler_named_like_a_controller_method_is_refused():
    with pytest.raises(exceptions.WrongHandlerParameters, match="process"):
        @dispatcher.rpc_service("clash")
        class Clash(service.ServiceController):
            @dispatcher.rpc_method(service="clash", method="go")
            def process(self, request, proxy):
                pass


@pytest.mark.parametrize("signature, reason", [
    # the case: the payload key took the proxy's place
    ("def go(self, request, item): pass", "second parameter 'item' takes the proxy"),
    ("def go(self, request, p, item): pass", "second parameter 'p' takes the proxy"),
    ("def go(self, request, *args): pass", "(self, message, proxy, ...)"),
    ("def go(self, *args, **kwargs): pass", "(self, message, proxy, ...)"),
    ("def go(self, request, *, proxy): pass", "(self, message, proxy, ...)"),
    ("def go(self, request, proxy, item, /): pass", "item are positional-only"),
])
@pytest.mark.parametrize("decorator", [dispatcher.rpc_method, dispatcher.rpc_response_method,
                                       dispatcher.subscription_method])
def test_a_handler_without_message_and_proxy_first_is_refused_when_declared(
        decorator, signature, reason):
    namespace = {}
    exec(signature, namespace)  # noqa: S102 - build a method with this exact signature
    service_name = "svc" if decorator is dispatcher.rpc_method else "remote"
    func = decorator(service=service_name, method="go")(namespace["go"])
    controller = type("Controller", (service.ServiceController,), {"go": func})
    with pytest.raises(exceptions.WrongHandlerParameters) as info:
        dispatcher.rpc_service("svc")(controller)
    assert reason in str(info.value)
    assert "Handler go of" in str(info.value)  # names the handler and its entry point
    assert f"{service_name}.go" in str(info.value)


@pytest.mark.parametrize("signature", [
    "def go(self, request, proxy, item): pass",
    "def go(self, message, _proxy, item=1): pass",
    "def go(self, msg, _, *, item): pass",
    "def go(self, request, proxy, /, item, **rest): pass",
])
def test_message_then_proxy_then_payload_keys_is_accepted(signature):
    namespace = {}
    exec(signature, namespace)  # noqa: S102
    func = dispatcher.rpc_method(service="svc", method="go")(namespace["go"])
    controller = type("Controller", (service.ServiceController,), {"go": func})
    dispatcher.rpc_service("svc")(controller)
    handler = controller.get_dispatcher().find(entry_point.EntryPoint("svc", "go"), "request")
    assert handler.arguments({"item": 5})["item"] == 5


def test_error_handler_may_name_its_proxy_underscore():
    @dispatcher.rpc_service("svc")
    class Controller(service.ServiceController):
        @dispatcher.rpc_error_method(service="remote", method="call")
        def on_error(self, error, _proxy):
            pass

    assert len(Controller.get_dispatcher().handlers) == 1
