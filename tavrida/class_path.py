"""Class paths: the ``module:Class`` names a config file gives its services by.

:func:`load` imports one and says what is wrong with a bad one in a
sentence, with a "did you mean" for a misspelt module or class name, so a
config file's ``[server] services`` mistakes are as clear as its key typos.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Iterable, List, Optional, Sequence, Tuple

from tavrida.service import ServiceController


class ClassPathError(Exception):
    """A ``module:Class`` that names no service class; the message says why."""


def did_you_mean(word: str, choices: Iterable[str], quote: str = "") -> str:
    """`` (did you mean X?)`` with the choice nearest ``word``, or ""."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {quote}{close[0]}{quote}?)" if close else ""


def _modules(folders: Optional[Sequence[str]]) -> List[str]:
    """Names of the modules importable from ``folders`` (all of ``sys.path``: None)."""
    return [info.name for info in pkgutil.iter_modules(folders)]


def _missing_module_hint(module_name: str, missing: str, folder: str) -> str:
    """A "did you mean" for ``missing``, the part of ``module_name`` that does not exist."""
    parent, _, leaf = missing.rpartition(".")
    if parent:
        try:
            path = getattr(importlib.import_module(parent), "__path__", None)
        except ImportError:
            return ""
        return did_you_mean(leaf, _modules(list(path or [])))
    # Modules beside the config file first: that is where services usually live.
    return did_you_mean(leaf, _modules([folder])) or did_you_mean(leaf, _modules(None))


def _service_classes(module: object) -> Tuple[List[str], List[str]]:
    """The names of ``module``'s service classes, and all its public names."""
    names = [name for name in dir(module) if not name.startswith("_")]
    services = [name for name in names if _is_service(getattr(module, name, None))]
    return services, names


def _is_service(value: object) -> bool:
    return (isinstance(value, type) and issubclass(value, ServiceController)
            and bool(value.service_name()))


def load(name: str, folder: str = "") -> type:
    """The service class ``name`` (``module:Class``) names; :class:`ClassPathError` if none.

    ``folder`` is where the config file is (its modules are offered first
    when a module name is misspelt).
    """
    module_name, _, class_name = name.partition(":")
    if not module_name or not class_name:
        raise ClassPathError(f"{name!r} is not module:Class")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = ""
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            hint = _missing_module_hint(module_name, exc.name, folder)
        raise ClassPathError(f"cannot import {name}: {exc}{hint}") from None
    except ImportError as exc:
        raise ClassPathError(f"cannot import {name}: {exc}") from None
    services, names = _service_classes(module)
    if not hasattr(module, class_name):
        hint = did_you_mean(class_name, services) or did_you_mean(class_name, names)
        raise ClassPathError(f"cannot import {name}: module {module_name!r} has no "
                             f"attribute {class_name!r}{hint}")
    if not _is_service(getattr(module, class_name)):
        offer = f" ({module_name} has {', '.join(services)})" if services else ""
        raise ClassPathError(
            f"{name} is not a ServiceController declared with rpc_service{offer}")
    cls: type = getattr(module, class_name)
    return cls
