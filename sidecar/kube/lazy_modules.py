"""Lazy `kubernetes_asyncio` packages: a name is imported when it is first used, not all at start.

`import kubernetes_asyncio.client` runs package `__init__` files that import every API class and
all ~770 models: about 1,400 modules and 15 MiB of resident memory, of which the sidecar uses a
handful (it reads and writes raw JSON, so no model is ever built). `install()` puts stand-ins for
those packages in `sys.modules`: each keeps the real package's path (so `from
kubernetes_asyncio.client.exceptions import ApiException` imports that one file) and resolves
the names the real `__init__` would have bound (`ApiClient`, `CoordinationV1Api`, `V1Lease`...)
from the same modules, on first access. A name the real `__init__` binds some other way makes
the stand-in run the real `__init__` once, so nothing is ever missing, only deferred.

Contract: call `install()` before anything imports `kubernetes_asyncio`; it returns False (and
changes nothing) if that already happened. Idempotent.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

PACKAGES = ("kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.api",
            "kubernetes_asyncio.client.models")
"""Parents before children: a child's spec is found through its parent's path."""

_lock = threading.RLock()


def install() -> bool:
    if PACKAGES[0] in sys.modules:
        return PACKAGES[0] in _installed
    with _lock:
        for name in PACKAGES:
            if name not in _installed:
                _install_one(name)
    return True


_installed: set[str] = set()


def _install_one(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an installed package")
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read(), spec.origin)
    stand_in = importlib.util.module_from_spec(spec)
    bindings: dict[str, tuple[str, str | None]] = {}  # name -> (module, attribute or None: the module)
    for node in tree.body:  # top-level statements only, which is all a generated __init__ has
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module not in (None, "__future__"):
            for alias in node.names:
                bindings[alias.asname or alias.name] = (str(node.module), alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bindings[alias.asname] = (alias.name, None)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                stand_in.__dict__[node.targets[0].id] = ast.literal_eval(node.value)  # __version__, __all__
            except ValueError:
                pass  # computed: left to the real __init__
    stand_in.__dict__["__getattr__"] = _resolver(stand_in, spec, bindings)
    sys.modules[name] = stand_in
    _installed.add(name)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, stand_in)


def _resolver(stand_in: ModuleType, spec: Any, bindings: dict[str, tuple[str, str | None]]) -> Any:
    realized = False

    def resolve(attribute: str) -> Any:
        nonlocal realized
        with _lock:
            if attribute in stand_in.__dict__:
                return stand_in.__dict__[attribute]
            if attribute in bindings:
                module, name = bindings[attribute]
                value = importlib.import_module(module)
                if name is not None:
                    value = getattr(value, name)
            elif attribute.startswith("__") or realized:
                raise AttributeError(f"module {stand_in.__name__!r} has no attribute {attribute!r}")
            elif importlib.util.find_spec(f"{stand_in.__name__}.{attribute}") is not None:
                value = importlib.import_module(f"{stand_in.__name__}.{attribute}")  # `from pkg import submodule`
            else:  # bound some other way: run the real __init__ once, then look again
                realized = True
                spec.loader.exec_module(stand_in)
                if attribute not in stand_in.__dict__:
                    raise AttributeError(f"module {stand_in.__name__!r} has no attribute {attribute!r}")
                return stand_in.__dict__[attribute]
            stand_in.__dict__[attribute] = value
            return value

    return resolve
