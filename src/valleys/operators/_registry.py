"""The registry of curvature matrices: one entry per matrix, written where the matrix is defined.

A curvature matrix registers its factory with :func:`register_curvature`::

    @register_curvature(MCFisherOperator)
    def mc_fisher(objective, theta=None, *, samples=1, seed=0, cache=None): ...

Everything that lists curvature matrices reads :data:`CURVATURES` instead of keeping its own
list: ``valleys.operators.__all__``, the top-level ``valleys`` namespace and the shared
dense-oracle test cases (``tests/_curvature_cases.py``), which refuse a registered matrix that
has no oracle. See CONTRIBUTING.md, "Add a curvature matrix".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from valleys.operators._base import LinearOperator

__all__ = ["CURVATURES", "Curvature", "register_curvature"]

Factory = TypeVar("Factory", bound=Callable[..., LinearOperator])


@dataclass(frozen=True)
class Curvature:
    """A registered curvature matrix.

    Attributes:
        name: the factory's name, which is also its public name (``valleys.operators.<name>``
            and ``valleys.<name>``).
        factory: ``factory(objective, theta=None, **options)`` builds the operator.
        operator: the :class:`~valleys.operators.LinearOperator` subclass it returns (exported
            next to the factory).
    """

    name: str
    factory: Callable[..., LinearOperator]
    operator: type[LinearOperator]

    @property
    def summary(self) -> str:
        """The first paragraph of the factory's docstring, on one line."""
        return " ".join((self.factory.__doc__ or "").strip().split("\n\n", 1)[0].split())


_REGISTRY: dict[str, Curvature] = {}
#: Every curvature matrix, by name, in registration order (read-only).
CURVATURES: Mapping[str, Curvature] = MappingProxyType(_REGISTRY)


def register_curvature(operator: type[LinearOperator]) -> Callable[[Factory], Factory]:
    """Decorator registering a curvature factory (named by its ``__name__``) and its class.

    Registering a name twice raises ``RuntimeError``: two matrices must not share a name.
    """
    if not (isinstance(operator, type) and issubclass(operator, LinearOperator)):
        raise TypeError(f"register_curvature needs a LinearOperator subclass, got {operator!r}")

    def register(factory: Factory) -> Factory:
        name = factory.__name__
        if name in _REGISTRY:
            raise RuntimeError(f"a curvature matrix named {name!r} is already registered")
        _REGISTRY[name] = Curvature(name, factory, operator)
        return factory

    return register
