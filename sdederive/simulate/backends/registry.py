"""The backend registry: names to `AbstractBackend` classes.

Light on purpose (only `importlib` and `sdederive.errors`): the command line builds its
`--backend` choices from `backend_names` without importing numpy, sympy, numba or CuPy.  The built-in
backends are listed by module path and imported (which registers them) when first asked for by name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sdederive.errors import SdederiveError, UnknownNameError

if TYPE_CHECKING:  # pragma: no cover - base imports numpy and sympy
    from sdederive.simulate.backends.base import AbstractBackend

__all__ = ["register_backend", "get_backend", "backend_names"]

#: the built-in backends by module path: imported (and so registered) when first asked for by name
_BUILTIN: dict[str, str] = {
    "numba": "sdederive.simulate.backends.numba_backend",
    "cupy": "sdederive.simulate.backends.cuda_backend",
}
_REGISTRY: dict[str, type[AbstractBackend]] = {}


def register_backend(cls: type[AbstractBackend]) -> type[AbstractBackend]:
    """Make `cls` (an `AbstractBackend` subclass with a `name`) available by name; usable as a
    class decorator.  Re-registering a name replaces the earlier class (a reloaded module)."""
    from sdederive.simulate.backends.base import AbstractBackend  # noqa: F811 - at run time

    if not (isinstance(cls, type) and issubclass(cls, AbstractBackend)):
        raise SdederiveError(f"register_backend takes an AbstractBackend subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise SdederiveError(f"backend class {cls.__name__} has name={name!r}; allowed: an identifier")
    if getattr(cls, "__abstractmethods__", None):
        raise SdederiveError(f"backend class {cls.__name__} does not implement "
                             f"{', '.join(sorted(cls.__abstractmethods__))}")
    _REGISTRY[name] = cls
    return cls


def backend_names() -> tuple[str, ...]:
    """Every backend name `sd.compile` accepts: the built-ins first (whether or not they can run here:
    see `available`), then the registered ones, in registration order."""
    return tuple(dict.fromkeys([*_BUILTIN, *_REGISTRY]))


def get_backend(name: str) -> AbstractBackend:
    """A new instance of the backend called `name`; `UnknownNameError` listing
    `backend_names` for any other name."""
    if not isinstance(name, str) or name not in backend_names():
        raise UnknownNameError("backend", name, backend_names())
    if name not in _REGISTRY:
        try:
            importlib.import_module(_BUILTIN[name])  # registers it
        except ImportError as e:
            from sdederive.simulate.backends.base import BackendUnavailableError

            raise BackendUnavailableError(f"backend {name!r} cannot be imported ({e}); install its dependencies "
                                          "(pip install -e .)") from e
    return _REGISTRY[name]()
