"""Public names loaded on first use: one table per namespace, and nothing else.

A package lists its public names once, as ``{name: module}``; this module
turns the table into the package's ``__getattr__`` and ``__dir__``
(PEP 562). ``import repoll`` therefore imports no other module, and a name
whose module needs a missing extra fails only when used, with the
:class:`~repoll.MissingExtraError` its module raises.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str, table: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose public names are ``table``.

    ``table`` maps each name to the module that defines it, relative to
    ``package``. A name is imported on first access and then cached in the
    package's namespace, so later accesses cost a dictionary lookup.
    """

    def __getattr__(name: str) -> object:
        try:
            module_name = table[name]
        except KeyError:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg, name=name, obj=sys.modules[package]) from None
        value = getattr(importlib.import_module(module_name, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        dunders = {name for name in vars(sys.modules[package]) if name.startswith("__")}
        return sorted(dunders | set(table))

    return __getattr__, __dir__
