"""Every registered curvature matrix against its dense float64 oracle, and the registry's reach:
``valleys.operators.__all__`` and the top-level namespace list exactly what is registered."""

from __future__ import annotations

import pytest
import torch
from _curvature_cases import CASES, PROBLEMS, Problem

import valleys
import valleys.operators as operators
from valleys.operators import CURVATURES, CurvatureOperator, LinearOperator

pytestmark = pytest.mark.usefixtures("one_thread")

_problems: dict[tuple, Problem] = {}


def problem(spec: tuple) -> Problem:
    """Problems are shared by all matrices (their per-sample oracles are computed once)."""
    if spec not in _problems:
        _problems[spec] = Problem(*spec)
    return _problems[spec]


def rel_err(A: torch.Tensor, B: torch.Tensor) -> float:
    return float((A - B).abs().max()) / max(float(B.abs().max()), 1e-300)


def test_every_registered_matrix_has_an_oracle_case():
    assert set(CASES) == set(CURVATURES), (
        "add a Case to tests/_curvature_cases.py for every registered curvature matrix")


@pytest.mark.parametrize("spec", PROBLEMS, ids=["-".join(map(str, s)) for s in PROBLEMS])
@pytest.mark.parametrize("name", sorted(CURVATURES))
def test_registered_operator_matches_dense_oracle(name, spec):
    case, P = CASES[name], problem(spec)
    op = CURVATURES[name].factory(P.obj, **case.options)
    assert isinstance(op, CURVATURES[name].operator)
    assert op.shape == (P.obj.dim, P.obj.dim) and op.dtype == torch.float64
    oracle = case.oracle(P, op)
    dense = op.to_dense()
    assert rel_err(dense, oracle) < case.rtol
    g = torch.Generator().manual_seed(0)
    V = torch.randn(P.obj.dim, 3, generator=g, dtype=torch.float64)
    assert rel_err(op.matmat(V), oracle @ V) < case.rtol
    assert rel_err(op.matvec(V[:, 0]), oracle @ V[:, 0]) < case.rtol
    # Every curvature matrix is symmetric, and says so (solvers rely on the flag).
    assert op.symmetric
    assert rel_err(dense, dense.T) < case.rtol
    assert rel_err(oracle, oracle.T) < 1e-12


def test_exports_are_read_from_the_registry():
    for name, entry in CURVATURES.items():
        assert getattr(operators, name) is entry.factory
        assert getattr(operators, entry.operator.__name__) is entry.operator
        assert name in operators.__all__ and entry.operator.__name__ in operators.__all__
        assert getattr(valleys, name) is entry.factory and name in valleys.__all__
        assert entry.summary, f"{name} needs a docstring"
    assert all(hasattr(operators, name) for name in operators.__all__)
    # Every curvature operator class the package exports is registered.
    exported = [getattr(operators, n) for n in operators.__all__]
    curvature_classes = {c for c in exported if isinstance(c, type)
                         and issubclass(c, LinearOperator) and c.__name__.endswith("Operator")
                         and c.__name__ not in ("LinearOperator", "DenseOperator",
                                                "LambdaOperator", "LowRankOperator",
                                                "ExpressionOperator", "CurvatureOperator")}
    assert curvature_classes == {entry.operator for entry in CURVATURES.values()}
    assert issubclass(CURVATURES["hessian"].operator, CurvatureOperator)


def test_registering_a_name_twice_is_refused():
    from valleys.operators._registry import register_curvature

    with pytest.raises(RuntimeError, match="already registered"):
        register_curvature(CURVATURES["ggn"].operator)(CURVATURES["ggn"].factory)
    with pytest.raises(TypeError, match="LinearOperator subclass"):
        register_curvature(int)
