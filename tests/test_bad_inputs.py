"""A standing battery of bad and unusual inputs, tried as a demanding new user would (issue #15).

Every case is one row ``(id, call, expected)`` of a table:

* ``err(Type, fragment)``: the call raises ``Type`` (a ``ValueError`` or ``TypeError``,
  subclasses allowed) whose message contains ``fragment``, which names the argument or says
  what to do; any other exception (``RuntimeError``, ``AttributeError``, ``IndexError``, ...)
  fails the case;
* ``gives(value)`` / ``holds(predicate)``: an unusual but valid input (a NumPy scalar, ``k == p``,
  a model with one parameter) is accepted and gives the right answer, often a closed form.

``was=`` records how a case behaved before the validation that now makes it pass ("wrong": a
silently wrong or meaningless answer, or a bad value accepted at the boundary that fails only
later; "crash": another exception type or a message naming the wrong cause). Cases with
``known=`` are defects not fixed yet: strict xfails, so a fix turns them into failures until the
mark is removed.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from valleys import (
    Objective,
    games,
    landscape,
    meanfield,
    models,
    noise,
    sde,
    smoothness,
    stability,
    sweeps,
)
from valleys._sharpness import nonuniformity, sharpness
from valleys.experiments import load_experiment
from valleys.experiments import run as run_experiment
from valleys.linalg import block_eigsh, eigsh, power_iteration, spectral_density, trace
from valleys.operators import (
    ggn,
    ggn_variance,
    gradient_covariance,
    hessian,
    hessian_variance,
)
from valleys.operators._base import DenseOperator, LambdaOperator
from valleys.operators._fisher import empirical_fisher
from valleys.problems import load_problem
from valleys.train.callbacks import SharpnessTracker
from valleys.train.flow import GradientFlow, gradient_flow
from valleys.train.loop import TrainConfig, train

F64 = torch.float64
NAN, INF = math.nan, math.inf
DIAG = (3.0, 2.0, 1.0, 0.5)  # the spectrum of op4(), descending
LABELS = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])


# -- the expected outcomes --------------------------------------------------------------------
@dataclass(frozen=True)
class err:
    """The call raises ``kind`` (subclasses allowed) with ``fragment`` in its message."""

    kind: type[Exception]
    fragment: str

    def check(self, call: Callable[[], Any]) -> None:
        with pytest.raises(self.kind) as raised:
            call()
        assert self.fragment in str(raised.value), str(raised.value)


def _plain(value: Any) -> Any:
    if callable(value):
        value = value()
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double()
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


@dataclass(frozen=True)
class gives:
    """The call is accepted and returns ``value`` (a number, a list, or a callable giving it)."""

    value: Any
    rel: float = 1e-6

    def check(self, call: Callable[[], Any]) -> None:
        got, want = _plain(call()), _plain(self.value)
        numbers_only = all(isinstance(v, int | float) and not isinstance(v, bool)
                           for v in (want if isinstance(want, list | tuple) else [want]))
        if not numbers_only:  # strings, dicts, flags: exact equality
            assert got == want, (got, want)
        elif isinstance(want, list | tuple):
            assert list(got) == pytest.approx(list(want), rel=self.rel, abs=1e-12), (got, want)
        else:
            assert got == pytest.approx(want, rel=self.rel, abs=1e-12), (got, want)


@dataclass(frozen=True)
class holds:
    """The call is accepted and its result satisfies ``predicate`` (``what`` says which)."""

    predicate: Callable[[Any], bool]
    what: str = ""

    def check(self, call: Callable[[], Any]) -> None:
        result = call()
        assert self.predicate(result), (self.what, result)


@dataclass(frozen=True)
class C:
    """One case: a readable id, the call, what must happen; ``was`` and ``known`` as above."""

    id: str
    call: Callable[[], Any]
    expected: Any
    was: str | None = None
    known: str | None = None

    def param(self) -> Any:
        marks = [pytest.mark.xfail(strict=True, reason=self.known)] if self.known else []
        return pytest.param(self, id=self.id, marks=marks)


# -- tiny problems ----------------------------------------------------------------------------
def X() -> torch.Tensor:
    return torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=F64)


def Y() -> torch.Tensor:
    return torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=F64)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    return X(), Y()


def _linear(d_in: int = 3, d_out: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(d_in, d_out).double()


def mse() -> Objective:
    """Linear regression: 8 parameters, 8 samples."""
    return Objective(_linear(), "mse", data())


def ce() -> Objective:
    return Objective(_linear(), "ce", (X(), LABELS))


def tanh_mlp() -> Objective:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    return Objective(model, "mse", data())


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()


def _one_data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-1.0, 2.0, 8, dtype=F64)[:, None]
    return x, 0.5 * x + 0.1


def one() -> Objective:
    """A model with one parameter: ``ℓ_i = ½(w x_i − y_i)²``, so ``H_i = x_i²``."""
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(0.5)
    return Objective(model, "mse", _one_data())


def one_curvatures() -> tuple[float, float]:
    """Sharpness ``mean x²`` and non-uniformity ``std x²`` of :func:`one`, in closed form."""
    x2 = _one_data()[0][:, 0] ** 2
    return float(x2.mean()), float(x2.std(correction=0))


def linear_sharpness() -> float:
    """``λ_max`` of the Hessian of :func:`mse`: ``I₂ ⊗ mean x̃x̃ᵀ`` with ``x̃ = (x, 1)``."""
    xt = torch.cat([X(), torch.ones(8, 1, dtype=F64)], dim=1)
    return float(torch.linalg.eigvalsh(xt.T @ xt / 8)[-1])


def op4() -> DenseOperator:
    return DenseOperator(torch.diag(torch.tensor(DIAG, dtype=F64)))


def nonsym() -> DenseOperator:
    return DenseOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=F64), symmetric=False)


def vec(n: int, value: float = 1.0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.full((n,), value, dtype=dtype)


def gaussian_noise() -> torch.Tensor:
    return torch.randn(2000, generator=torch.Generator().manual_seed(0), dtype=F64)


# ================================================================================================
# Objective
# ================================================================================================
OBJECTIVE = [
    C("model-is-a-string", lambda: Objective("model", "mse", data()),
      err(TypeError, "model must be a torch.nn.Module")),
    C("model-is-None", lambda: Objective(None, "mse", data()),
      err(TypeError, "model must be a torch.nn.Module")),
    C("loss-misspelled-ce2", lambda: Objective(_linear(), "ce2", data()),
      err(ValueError, "unknown loss 'ce2'")),
    C("loss-MSE-uppercase", lambda: Objective(_linear(), "MSE", data()),
      err(ValueError, "unknown loss 'MSE'")),
    C("loss-None", lambda: Objective(_linear(), None, data()), err(TypeError, "loss must be")),
    C("loss-int", lambda: Objective(_linear(), 3, data()), err(TypeError, "loss must be")),
    C("custom-loss-returns-mean", lambda: Objective(
        _linear(), lambda o, t: ((o - t) ** 2).mean(), data()),
      err(ValueError, "per-sample losses of shape (batch,)")),
    C("data-single-tensor", lambda: Objective(_linear(), "mse", X()),
      err(TypeError, "pair (X, Y)")),
    C("data-None", lambda: Objective(_linear(), "mse", None), err(TypeError, "pair (X, Y)")),
    C("data-generator", lambda: Objective(_linear(), "mse", (b for b in [data()])),
      err(TypeError, "one-shot iterator")),
    C("data-numpy-arrays", lambda: Objective(_linear(), "mse", (X().numpy(), Y().numpy())),
      err(TypeError, "torch.as_tensor"), was="crash"),
    C("data-labels-shorter", lambda: Objective(_linear(), "mse", (X(), Y()[:5])),
      err(ValueError, "same number of samples")),
    C("data-0d-inputs", lambda: Objective(_linear(), "mse", (torch.tensor(1.0, dtype=F64), Y())),
      err(ValueError, "same number of samples")),
    C("data-X-float32-model-float64", lambda: Objective(_linear(), "mse", (X().float(), Y())),
      err(TypeError, "inputs are torch.float32")),
    C("data-Y-float32-model-float64", lambda: Objective(_linear(), "mse", (X(), Y().float())),
      err(TypeError, "targets are torch.float32")),
    C("data-X-int64", lambda: Objective(_linear(), "mse", (X().long(), Y())),
      err(TypeError, "inputs"), was="crash"),
    C("data-X-wrong-feature-count", lambda: Objective(
        _linear(), "mse", (torch.randn(8, 4, dtype=F64), Y())),
      err(ValueError, "(8, 4)"), was="crash"),
    C("data-X-nan", lambda: Objective(_linear(), "mse", (X() * NAN, Y())),
      err(ValueError, "inputs contain NaN")),
    C("data-X-inf", lambda: Objective(_linear(), "mse", (X() * INF, Y())),
      err(ValueError, "inputs contain NaN or infinite")),
    C("data-Y-nan", lambda: Objective(_linear(), "mse", (X(), Y() * NAN)),
      err(ValueError, "targets contain NaN")),
    C("data-empty-tensors", lambda: Objective(_linear(), "mse", (X()[:0], Y()[:0])),
      err(ValueError, "data set is empty")),
    C("data-empty-list", lambda: Objective(_linear(), "mse", []),
      err(ValueError, "data set is empty")),
    C("data-list-with-empty-batch", lambda: Objective(
        _linear(), "mse", [data(), (X()[:0], Y()[:0])]),
      err(ValueError, "batch 1 of the data is empty")),
    C("data-batch-not-a-pair", lambda: Objective(_linear(), "mse", [(X(), Y(), Y())]),
      err(TypeError, "each batch must be a pair")),
    C("data-dataloader-shuffle", lambda: Objective(
        _linear(), "mse", DataLoader(TensorDataset(*data()), batch_size=4, shuffle=True)),
      err(ValueError, "shuffle=False")),
    C("data-dataloader-drop-last", lambda: Objective(
        _linear(), "mse", DataLoader(TensorDataset(*data()), batch_size=3, drop_last=True)),
      err(ValueError, "drop_last=True")),
    C("data-dataloader-uneven-batches-ok", lambda: Objective(
        _linear(), "mse", DataLoader(TensorDataset(*data()), batch_size=3)).loss(),
      gives(lambda: mse().loss())),
    C("mse-targets-3-outputs-for-2", lambda: Objective(
        _linear(), "mse", (X(), torch.randn(8, 3, dtype=F64))),
      err(ValueError, "targets of the output shape")),
    C("mse-targets-1d-for-1-output", lambda: Objective(_linear(3, 1), "mse", (X(), Y()[:, 0])),
      err(ValueError, "y[:, None]")),
    C("mse-integer-labels", lambda: Objective(_linear(), "mse", (X(), LABELS)),
      err(TypeError, "loss 'mse' needs float targets")),
    C("ce-label-out-of-range", lambda: Objective(_linear(), "ce", (X(), LABELS + 1)),
      err(ValueError, "class labels must lie in [0, 2)")),
    C("ce-negative-label", lambda: Objective(_linear(), "ce", (X(), LABELS - 1)),
      err(ValueError, "class labels must lie in [0, 2)")),
    C("ce-bad-label-in-a-later-batch", lambda: Objective(
        _linear(), "ce", [(X()[:4], LABELS[:4]), (X()[4:], LABELS[4:] + 5)]),
      err(ValueError, "batch 1: class labels")),
    C("ce-float-labels", lambda: Objective(_linear(), "ce", (X(), LABELS.double())),
      err(ValueError, "class probabilities of shape")),
    C("ce-int32-labels", lambda: Objective(_linear(), "ce", (X(), LABELS.int())),
      err(TypeError, ".long()")),
    C("ce-bool-labels", lambda: Objective(_linear(), "ce", (X(), LABELS.bool())),
      err(TypeError, "int64 labels or float probabilities")),
    C("ce-probabilities-wrong-width", lambda: Objective(
        _linear(), "ce", (X(), torch.full((8, 3), 1 / 3, dtype=F64))),
      err(ValueError, "class probabilities of shape")),
    C("ce-regression-targets", lambda: Objective(_linear(), "ce", data()),
      err(ValueError, "non-negative"), was="wrong"),
    C("ce-one-hot-float-targets", lambda: Objective(
        _linear(), "ce", (X(), nn.functional.one_hot(LABELS, 2).double())).loss(),
      gives(lambda: ce().loss(), rel=1e-12)),
    C("ce-single-output", lambda: Objective(_linear(3, 1), "ce", (X(), LABELS * 0)),
      err(ValueError, "at least 2 outputs"), was="wrong"),
    C("batchnorm-in-train-mode", lambda: Objective(bn_model(), "mse", data()),
      err(ValueError, "model.eval()")),
    C("dropout-in-train-mode", lambda: Objective(
        nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)).double(), "mse", data()),
      err(ValueError, "model.eval()")),
    C("batchnorm-train-mode-allowed", lambda: Objective(
        bn_model(), "mse", data(), allow_train_mode=True).n, gives(8)),
    C("batchnorm-eval-mode-ok", lambda: Objective(bn_model().eval(), "mse", data()).dim,
      gives(12)),
    C("model-without-parameters", lambda: Objective(nn.Identity(), "mse", (X(), X())),
      err(ValueError, "no parameters with requires_grad")),
    C("model-all-frozen", lambda: Objective(_linear().requires_grad_(False), "mse", data()),
      err(ValueError, "no parameters with requires_grad")),
    C("params-pattern-matches-nothing", lambda: Objective(
        _linear(), "mse", data(), params=["layer.*"]),
      err(ValueError, "matches none of the model's parameters")),
    C("params-single-string-pattern", lambda: Objective(
        _linear(), "mse", data(), params="bias").dim, gives(2)),
    C("params-mixed-dtypes", lambda: Objective(
        nn.Sequential(nn.Linear(3, 2).double(), nn.Linear(2, 2)), "mse", data()),
      err(TypeError, "share one dtype")),
    C("chunk-size-0", lambda: Objective(_linear(), "mse", data(), chunk_size=0),
      err(ValueError, "chunk_size must be a positive integer")),
    C("chunk-size-negative", lambda: Objective(_linear(), "mse", data(), chunk_size=-2),
      err(ValueError, "chunk_size must be a positive integer")),
    C("chunk-size-2.5", lambda: Objective(_linear(), "mse", data(), chunk_size=2.5),
      err(ValueError, "chunk_size must be a positive integer")),
    C("chunk-size-string", lambda: Objective(_linear(), "mse", data(), chunk_size="4"),
      err(ValueError, "chunk_size must be a positive integer")),
    C("chunk-size-True", lambda: Objective(_linear(), "mse", data(), chunk_size=True),
      err(ValueError, "chunk_size"), was="wrong"),
    C("chunk-size-np-int64", lambda: Objective(
        _linear(), "mse", data(), chunk_size=np.int64(4)).num_chunks, gives(2), was="crash"),
    C("distributed-without-process-group", lambda: Objective(
        _linear(), "mse", data(), distributed=True),
      err(ValueError, "initialized torch.distributed process group")),
    C("theta-wrong-length", lambda: mse().loss(vec(7)), err(ValueError, "shape (8,)")),
    C("theta-column-vector", lambda: mse().loss(torch.zeros(8, 1, dtype=F64)),
      err(ValueError, "flat vector of shape (8,)")),
    C("theta-float32", lambda: mse().loss(vec(8, dtype=torch.float32)),
      err(TypeError, "θ has dtype torch.float32")),
    C("theta-list", lambda: mse().loss([0.0] * 8), err(TypeError, "θ must be a torch tensor")),
    C("theta-numpy", lambda: mse().loss(np.zeros(8)), err(TypeError, "θ must be a torch tensor")),
    C("theta-nan-loss-is-nan", lambda: mse().loss(vec(8, NAN)), holds(lambda v: bool(v.isnan()))),
    C("set-parameters-wrong-length", lambda: mse().set_parameters(torch.zeros(3, dtype=F64)),
      err(ValueError, "shape (8,)")),
    C("flatten-missing-names", lambda: mse().flatten({}), err(ValueError, "missing parameters")),
    C("accuracy-of-a-regression", lambda: Objective(
        _linear(3, 1), "mse", (X(), Y()[:, :1])).accuracy(),
      err(ValueError, "outputs of shape (batch, classes)")),
    C("minibatch-no-indices", lambda: mse().batch_loss_and_gradient(
        None, torch.tensor([], dtype=torch.long)), err(ValueError, "at least one index")),
    C("minibatch-index-out-of-range", lambda: mse().batch_loss_and_gradient(
        None, torch.tensor([8])), err(ValueError, "indices"), was="crash"),
    C("minibatch-negative-index", lambda: mse().batch_loss_and_gradient(
        None, torch.tensor([-1])), err(ValueError, "indices"), was="wrong"),
    C("minibatch-float-indices", lambda: mse().batch_loss_and_gradient(
        None, torch.tensor([1.0])), err(TypeError, "indices"), was="crash"),
    C("batch-index-out-of-range", lambda: mse().batch(torch.tensor([9])),
      err(ValueError, "indices"), was="crash"),
]

# ================================================================================================
# Operators
# ================================================================================================
OPERATORS = [
    C("hessian-of-a-string", lambda: hessian("x"), err(TypeError, "needs a valleys.Objective")),
    C("hessian-backend-misspelled", lambda: hessian(mse(), backend="fast"),
      err(ValueError, "unknown Hessian backend 'fast'")),
    C("hessian-theta-wrong-shape", lambda: hessian(mse(), torch.zeros(3, dtype=F64)),
      err(ValueError, "shape (8,)")),
    C("hessian-theta-float32", lambda: hessian(mse(), vec(8, dtype=torch.float32)),
      err(TypeError, "dtype torch.float32")),
    C("hessian-theta-nan", lambda: sharpness_at(mse(), vec(8, NAN)),
      err(ValueError, "θ contains NaN"), was="wrong"),
    C("hessian-theta-inf-tanh", lambda: hessian(tanh_mlp(), vec(tanh_mlp().dim, INF)),
      err(ValueError, "θ contains NaN or infinite"), was="wrong"),
    C("ggn-of-None", lambda: ggn(None), err(TypeError, "needs a valleys.Objective")),
    C("fisher-of-a-string", lambda: empirical_fisher("x"),
      err(TypeError, "needs a valleys.Objective")),
    C("gradient-covariance-of-a-string", lambda: gradient_covariance("x"),
      err(TypeError, "needs a valleys.Objective")),
    C("gradient-covariance-theta-nan", lambda: gradient_covariance(mse(), vec(8, NAN)),
      err(ValueError, "θ contains NaN"), was="wrong"),
    C("hessian-variance-of-a-string", lambda: hessian_variance("x"),
      err(TypeError, "needs a valleys.Objective")),
    C("hessian-variance-method-misspelled", lambda: hessian_variance(mse(), method="fast"),
      err(ValueError, "unknown Hessian-variance method 'fast'")),
    C("hessian-variance-sample-block-0", lambda: hessian_variance(mse(), sample_block=0),
      err(ValueError, "sample_block must be a positive integer")),
    C("hessian-variance-sample-block-True", lambda: hessian_variance(mse(), sample_block=True),
      err(ValueError, "sample_block"), was="wrong"),
    C("hessian-variance-sample-block-np-int64", lambda: hessian_variance(
        mse(), sample_block=np.int64(2)).size, gives(8), was="crash"),
    C("ggn-variance-of-a-string", lambda: ggn_variance("x"),
      err(TypeError, "needs a valleys.Objective")),
    C("matvec-wrong-length", lambda: hessian(mse()).matvec(vec(7)), err(ValueError, "shape (8,)")),
    C("matvec-float32", lambda: hessian(mse()).matvec(vec(8, dtype=torch.float32)),
      err(TypeError, ".to(torch.float64)")),
    C("matvec-list", lambda: hessian(mse()).matvec([0.0] * 8),
      err(TypeError, "acts on torch tensors")),
    C("matvec-column", lambda: hessian(mse()).matvec(torch.zeros(8, 1, dtype=F64)),
      err(ValueError, "shape (8,)")),
    C("matmat-flat-vector", lambda: hessian(mse()).matmat(vec(8)),
      err(ValueError, "shape (8, k)")),
    C("dense-1d", lambda: DenseOperator(torch.zeros(3)), err(TypeError, "2-D torch tensor")),
    C("dense-list", lambda: DenseOperator([[1.0, 0.0], [0.0, 1.0]]),
      err(TypeError, "2-D torch tensor")),
    C("dense-not-square", lambda: DenseOperator(torch.zeros(3, 2)),
      err(ValueError, "square matrix")),
    C("dense-0x0", lambda: DenseOperator(torch.zeros(0, 0)), err(ValueError, "non-empty square"),
      was="crash"),
    C("dense-nan", lambda: DenseOperator(torch.full((2, 2), NAN)), err(ValueError, "non-finite")),
    C("dense-int64", lambda: DenseOperator(torch.eye(3, dtype=torch.int64)),
      err(TypeError, "real floating matrix"), was="wrong"),
    C("lambda-size-0", lambda: LambdaOperator(lambda v: v, 0, F64),
      err(ValueError, "size must be a positive integer")),
    C("lambda-size-2.5", lambda: LambdaOperator(lambda v: v, 2.5, F64),
      err(ValueError, "size must be a positive integer")),
    C("lambda-size-True", lambda: LambdaOperator(lambda v: v, True, F64),
      err(ValueError, "size must be a positive integer"), was="wrong"),
    C("lambda-size-np-int64", lambda: LambdaOperator(lambda v: 2 * v, np.int64(3), F64).size,
      gives(3)),
    C("lambda-dtype-string", lambda: LambdaOperator(lambda v: v, 3, "float64"),
      err(TypeError, "torch.dtype"), was="crash"),
    C("lambda-device-tpu", lambda: LambdaOperator(lambda v: v, 3, F64, device="tpu"),
      err(ValueError, "unknown device 'tpu'"), was="crash"),
    C("lambda-device-cuda-on-cpu-torch", lambda: LambdaOperator(lambda v: v, 3, F64,
                                                                device="cuda"),
      holds(lambda op: op.device.type == "cuda") if torch.cuda.is_available()
      else err(ValueError, "CUDA is not available"), was="crash"),
    C("lambda-returns-wrong-shape", lambda: eigsh(LambdaOperator(lambda v: v[:2], 4, F64)),
      err(ValueError, "fix its matvec")),
    C("lambda-returns-nan", lambda: eigsh(LambdaOperator(lambda v: v * NAN, 4, F64)),
      err(ValueError, "produced NaN/inf")),
    C("operator-times-string", lambda: op4() * "x", err(TypeError, "real number"), was="crash"),
    C("operator-divided-by-0", lambda: op4() / 0, err(ValueError, "by zero"), was="crash"),
    C("operator-times-inf", lambda: op4() * INF, err(ValueError, "must be finite"), was="wrong"),
    C("operator-times-nan", lambda: op4() * NAN, err(ValueError, "must be finite"),
      was="wrong"),
    C("operator-times-np-float32", lambda: eigsh(op4() * np.float32(2.0)).values,
      gives([6.0])),
    C("operator-plus-other-size", lambda: op4() + DenseOperator(torch.eye(3, dtype=F64)),
      err(ValueError, "sizes, dtypes and devices must agree")),
    C("operator-plus-tensor", lambda: op4() + torch.eye(4, dtype=F64),
      err(TypeError, "unsupported operand")),
]


def accepted_or_refused(call: Callable[[], Any], name: str) -> tuple[str, Any]:
    """``("value", result)``, or ``("refused", message)`` for a ValueError/TypeError naming
    ``name``; anything else propagates."""
    try:
        return "value", call()
    except (ValueError, TypeError) as error:
        assert name in str(error), str(error)
        return "refused", str(error)


def sharpness_at(objective: Objective, theta: torch.Tensor) -> float:
    return float(eigsh(hessian(objective, theta)).values[0])


# ================================================================================================
# linalg: eigsh, block_eigsh, power_iteration, trace, spectral_density
# ================================================================================================
LINALG = [
    C("eigsh-of-a-string", lambda: eigsh("x"), err(TypeError, "needs a valleys LinearOperator")),
    C("eigsh-of-a-tensor", lambda: eigsh(torch.eye(3)), err(TypeError, "DenseOperator")),
    C("eigsh-non-symmetric", lambda: eigsh(nonsym()), err(ValueError, "symmetric operator")),
    C("eigsh-non-symmetric-declared-symmetric", lambda: eigsh(
        DenseOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=F64), symmetric=True), k=2),
      err(ValueError, "asymmetric")),
    C("eigsh-product-of-operators", lambda: eigsh(op4() @ op4()),
      err(ValueError, "symmetric=False")),
    *[C(f"eigsh-k-{name}", (lambda k=k: eigsh(op4(), k=k)), err(ValueError, "k must be an integer"))
      for name, k in [("0", 0), ("negative", -1), ("p+1", 5), ("2.5", 2.5), ("True", True),
                      ("string", "1"), ("None", None)]],
    C("eigsh-k-np-int64", lambda: eigsh(op4(), k=np.int64(2)).values, gives([3.0, 2.0])),
    C("eigsh-k-equals-p", lambda: eigsh(op4(), k=4).values, gives(list(DIAG))),
    C("eigsh-k-equals-p-smallest", lambda: eigsh(op4(), k=4, which="smallest").values,
      gives(sorted(DIAG))),
    *[C(f"eigsh-which-{which}", (lambda w=which: eigsh(op4(), which=w)),
        err(ValueError, "which must be one of"))
      for which in ["biggest", "LA", "Largest", None]],
    *[C(f"eigsh-tol-{name}", (lambda t=tol: eigsh(op4(), tol=t)),
        err(ValueError, "tol must be a number in (0, 1)"))
      for name, tol in [("0", 0), ("negative", -1e-4), ("nan", NAN), ("inf", INF),
                        ("string", "1e-4"), ("True", True), ("None", None)]],
    C("eigsh-tol-np-float32", lambda: eigsh(op4(), tol=np.float32(1e-3)).values,
      gives([3.0], rel=2e-3)),
    C("eigsh-seed-string", lambda: eigsh(op4(), seed="x"), err(TypeError, "seed must be an int")),
    C("eigsh-seed-1.5", lambda: eigsh(op4(), seed=1.5), err(TypeError, "seed must be an int")),
    C("eigsh-seed-True", lambda: eigsh(op4(), seed=True), err(TypeError, "seed must be an int")),
    C("eigsh-seed-2**64", lambda: eigsh(op4(), seed=2**64), err(ValueError, "seed"),
      was="crash"),
    C("eigsh-value-within-its-error-bound", lambda: eigsh(op4(), seed=-7132376),
      holds(lambda r: abs(float(r.values[0]) - 3.0) <= min(float(r.error_bounds[0]), 3e-4),
            "the top eigenvalue 3 lies within the reported bound and tol·|λ|"), was="wrong"),
    C("eigsh-seed-np-int64", lambda: eigsh(op4(), seed=np.int64(3)).values, gives([3.0])),
    C("eigsh-seed-None", lambda: eigsh(op4(), seed=None).values, gives([3.0])),
    C("eigsh-v0-wrong-shape", lambda: eigsh(op4(), v0=vec(3)), err(ValueError, "v0 must have")),
    C("eigsh-v0-column", lambda: eigsh(op4(), v0=torch.ones(4, 1, dtype=F64)),
      err(ValueError, "v0 must have shape (4,)")),
    C("eigsh-v0-float32", lambda: eigsh(op4(), v0=vec(4, dtype=torch.float32)),
      err(TypeError, "v0 must have the operator's dtype")),
    C("eigsh-v0-zero", lambda: eigsh(op4(), v0=vec(4, 0.0)), err(ValueError, "nonzero")),
    C("eigsh-v0-nan", lambda: eigsh(op4(), v0=vec(4, NAN)), err(ValueError, "finite")),
    C("eigsh-v0-list", lambda: eigsh(op4(), v0=[1.0] * 4), err(TypeError, "v0 must be a torch")),
    C("eigsh-max-matvecs-0", lambda: eigsh(op4(), max_matvecs=0),
      err(ValueError, "max_matvecs must be an integer")),
    C("eigsh-max-matvecs-float", lambda: eigsh(op4(), max_matvecs=10.5),
      err(ValueError, "max_matvecs must be an integer")),
    C("eigsh-ncv-1", lambda: eigsh(op4(), ncv=1), err(ValueError, "ncv must be an integer")),
    C("block-eigsh-V0-wrong-rows", lambda: block_eigsh(op4(), torch.ones(3, 1, dtype=F64)),
      err(ValueError, "V0 must be a tensor of shape (4, m)")),
    C("block-eigsh-V0-flat", lambda: block_eigsh(op4(), vec(4)),
      err(ValueError, "V0 must be a tensor of shape (4, m)")),
    C("block-eigsh-V0-float32", lambda: block_eigsh(op4(), torch.ones(4, 1)),
      err(TypeError, "V0 must have the operator's dtype")),
    C("block-eigsh-V0-nan", lambda: block_eigsh(op4(), torch.full((4, 1), NAN, dtype=F64)),
      err(ValueError, "V0 must be finite")),
    C("block-eigsh-V0-zero-restarts-randomly", lambda: block_eigsh(
        op4(), torch.zeros(4, 1, dtype=F64))[0].values, gives([3.0], rel=1e-4)),
    C("block-eigsh-k-equals-p", lambda: block_eigsh(op4(), torch.ones(4, 1, dtype=F64), k=4),
      err(ValueError, "1 <= k < p")),
    C("block-eigsh-which-misspelled", lambda: block_eigsh(
        op4(), torch.ones(4, 1, dtype=F64), which="top"), err(ValueError, "which must be")),
    C("power-tol-0", lambda: power_iteration(op4(), tol=0), err(ValueError, "tol must be")),
    C("power-max-matvecs-0", lambda: power_iteration(op4(), max_matvecs=0),
      err(ValueError, "max_matvecs")),
    C("power-v0-zero", lambda: power_iteration(op4(), v0=vec(4, 0.0)),
      err(ValueError, "nonzero")),
    C("power-non-symmetric", lambda: power_iteration(nonsym()), err(ValueError, "symmetric")),
    C("power-converges-to-top", lambda: power_iteration(op4(), tol=1e-8).values,
      gives([3.0], rel=1e-6)),
    C("trace-of-a-string", lambda: trace("x"), err(TypeError, "needs a valleys LinearOperator")),
    C("trace-method-misspelled", lambda: trace(op4(), method="exact2"),
      err(ValueError, "method must be one of")),
    C("trace-distribution-misspelled", lambda: trace(op4(), distribution="normal"),
      err(ValueError, "distribution must be one of")),
    C("trace-hutchpp-2-matvecs", lambda: trace(op4(), num_matvecs=2),
      err(ValueError, "num_matvecs (hutch++) must be an integer >= 3")),
    C("trace-hutchinson-1-matvec", lambda: trace(op4(), "hutchinson", num_matvecs=1),
      err(ValueError, "num_matvecs (hutchinson)")),
    C("trace-matvecs-float", lambda: trace(op4(), num_matvecs=9.5),
      err(ValueError, "num_matvecs")),
    C("trace-seed-string", lambda: trace(op4(), seed="x"), err(TypeError, "seed must be an int")),
    C("trace-exact", lambda: trace(op4(), "exact").value, gives(sum(DIAG))),
    C("trace-exact-non-symmetric", lambda: trace(nonsym(), "exact").value, gives(2.0)),
    C("trace-hutchpp-exact-when-budget-covers-p", lambda: trace(op4(), num_matvecs=12).value,
      gives(sum(DIAG), rel=1e-9)),
    C("slq-probes-0", lambda: spectral_density(op4(), num_probes=0),
      err(ValueError, "num_probes must be an integer")),
    C("slq-lanczos-steps-0", lambda: spectral_density(op4(), lanczos_steps=0),
      err(ValueError, "lanczos_steps must be an integer")),
    C("slq-sigma-0", lambda: spectral_density(op4(), sigma=0),
      err(ValueError, "sigma must be a positive finite number")),
    C("slq-sigma-nan", lambda: spectral_density(op4(), sigma=NAN),
      err(ValueError, "sigma must be a positive finite number")),
    C("slq-sigma-string", lambda: spectral_density(op4(), sigma="x"),
      err(ValueError, "sigma must be a positive finite number")),
    C("slq-sigma-True", lambda: spectral_density(op4(), sigma=True),
      err(ValueError, "sigma"), was="wrong"),
    C("slq-grid-empty", lambda: spectral_density(op4(), grid=[]),
      err(ValueError, "grid must be a non-empty 1-D array")),
    C("slq-grid-2d", lambda: spectral_density(op4(), grid=[[1.0, 2.0]]),
      err(ValueError, "grid must be a non-empty 1-D array")),
    C("slq-grid-string", lambda: spectral_density(op4(), grid="abc"),
      err(TypeError, "grid must be a 1-D sequence of numbers")),
    C("slq-grid-nan", lambda: spectral_density(op4(), grid=[0.0, NAN]),
      err(ValueError, "finite numbers")),
    C("slq-num-points-1", lambda: spectral_density(op4(), num_points=1),
      err(ValueError, "num_points must be an integer >= 2")),
    C("slq-non-symmetric", lambda: spectral_density(nonsym()), err(ValueError, "symmetric")),
    C("slq-moments-exact-for-small-p", lambda: spectral_density(
        op4(), num_probes=3, lanczos_steps=10).moments(1), gives(sum(DIAG) / 4, rel=1e-9)),
]

# ================================================================================================
# sharpness, non-uniformity
# ================================================================================================
SHARPNESS = [
    C("sharpness-of-a-string", lambda: sharpness("x"), err(TypeError, "valleys.Objective")),
    C("sharpness-tol-0", lambda: sharpness(mse(), tol=0), err(ValueError, "tol must be")),
    C("sharpness-tol-nan", lambda: sharpness(mse(), tol=NAN), err(ValueError, "tol must be")),
    C("sharpness-seed-string", lambda: sharpness(mse(), seed="a"),
      err(TypeError, "seed must be an int")),
    C("sharpness-max-matvecs-0", lambda: sharpness(mse(), max_matvecs=0),
      err(ValueError, "max_matvecs")),
    C("sharpness-tol-below-rounding", lambda: accepted_or_refused(
        lambda: sharpness(mse(), tol=1e-15), "tol"),
      holds(lambda r: r[0] == "refused" or abs(r[1] / linear_sharpness() - 1) < 1e-12,
            "the exact answer (p matvecs span R^p) or a ValueError naming tol"), was="crash"),
    C("sharpness-tol-1", lambda: accepted_or_refused(lambda: sharpness(mse(), tol=1.0), "tol"),
      holds(lambda r: r[0] == "refused" or abs(r[1] / linear_sharpness() - 1) < 1e-3,
            "a relative tolerance >= 1 accepts any Ritz value"), was="wrong"),
    C("sharpness-linear-model-closed-form", lambda: sharpness(mse(), tol=1e-10),
      gives(linear_sharpness, rel=1e-8)),
    C("sharpness-np-float32-tol", lambda: sharpness(mse(), tol=np.float32(1e-6)),
      gives(linear_sharpness, rel=1e-5)),
    C("sharpness-one-parameter-model", lambda: sharpness(one()),
      gives(lambda: one_curvatures()[0], rel=1e-10)),
    C("nonuniformity-one-parameter-model", lambda: nonuniformity(one()),
      gives(lambda: one_curvatures()[1], rel=1e-8)),
    C("nonuniformity-of-an-int", lambda: nonuniformity(3), err(TypeError, "valleys.Objective")),
    C("nonuniformity-tol-negative", lambda: nonuniformity(mse(), tol=-1),
      err(ValueError, "tol must be")),
]

# ================================================================================================
# stability
# ================================================================================================
st = stability
STABILITY = [
    *[C(f"max-stable-lr-batch-{name}", (lambda b=b: st.max_stable_lr(mse(), b)),
        err(ValueError, "batch_size"))
      for name, b in [("0", 0), ("negative", -1), ("above-n", 9), ("2.5", 2.5), ("True", True),
                      ("string", "4"), ("None", None)]],
    C("max-stable-lr-batch-np-int64-is-gd", lambda: st.max_stable_lr(mse(), np.int64(8)),
      gives(lambda: 2 / linear_sharpness(), rel=1e-6)),
    C("max-stable-lr-one-parameter-sgd", lambda: st.max_stable_lr(one(), 1),
      gives(lambda: st.critical_lr(*one_curvatures(), 1, 8), rel=1e-6)),
    C("max-stable-lr-of-a-string", lambda: st.max_stable_lr("x", 4),
      err(TypeError, "needs a valleys.Objective")),
    C("max-stable-lr-tol-0", lambda: st.max_stable_lr(mse(), 4, tol=0),
      err(ValueError, "tol must be a number in (0, 1)")),
    C("max-stable-lr-tol-1", lambda: st.max_stable_lr(mse(), 4, tol=1),
      err(ValueError, "tol must be a number in (0, 1)")),
    C("max-stable-lr-curvature-misspelled", lambda: st.max_stable_lr(mse(), 4, curvature="hess"),
      err(ValueError, "curvature must be one of")),
    C("max-stable-lr-seed-string", lambda: st.max_stable_lr(mse(), 4, seed="x"),
      err(TypeError, "seed must be an int")),
    C("max-stable-lr-max-iter-0", lambda: st.max_stable_lr_analysis(mse(), 4, max_iter=0),
      err(ValueError, "max_iter must be an integer >= 1")),
    C("max-stable-lr-max-iter-True", lambda: st.max_stable_lr_analysis(mse(), 4, max_iter=True),
      err(ValueError, "max_iter must be an integer"), was="wrong"),
    C("max-stable-lr-max-iter-np-int64", lambda: st.max_stable_lr_analysis(
        mse(), 4, max_iter=np.int64(50)).lr,
      gives(lambda: st.max_stable_lr(mse(), 4)), was="crash"),
    C("max-stable-lr-method-with-ggn", lambda: st.max_stable_lr_analysis(
        mse(), 4, method="vmap", curvature="ggn"), err(ValueError, "leave method='auto'")),
    *[C(f"is-stable-lr-{name}", (lambda lr=lr: st.is_stable(mse(), lr, 4)),
        err(ValueError, "lr must be a positive finite number"))
      for name, lr in [("0", 0), ("negative", -0.1), ("nan", NAN), ("inf", INF),
                       ("string", "0.1"), ("None", None), ("True", True)]],
    C("is-stable-lr-np-float32", lambda: st.is_stable(mse(), np.float32(0.1), 4),
      holds(lambda v: v is True)),
    C("stability-analysis-curvature-misspelled", lambda: st.stability_analysis(
        mse(), 0.1, 4, curvature="gn"), err(ValueError, "curvature must be one of")),
    C("exact-mean-square-one-parameter", lambda: st.exact_mean_square(one(), 0.1, 2)
      .spectral_radius,
      gives(lambda: st.sgd_criterion(*one_curvatures(), 0.1, 2, 8), rel=1e-8)),
    C("exact-mean-square-lr-0", lambda: st.exact_mean_square(mse(), 0, 4),
      err(ValueError, "lr must be a positive")),
    C("exact-mean-square-method-misspelled", lambda: st.exact_mean_square(
        mse(), 0.1, 4, method="fast"), err(ValueError, "method must be")),
    C("exact-mean-square-too-big", lambda: st.exact_mean_square(mse(), 0.1, 4, max_dim=4),
      err(ValueError, "exceeds max_dim = 4")),
    C("exact-mean-square-hessians-wrong-shape", lambda: st.exact_mean_square(
        torch.zeros(3, 2), 0.1, 1), err(TypeError, "shape (n, p, p)")),
    C("gram-batch-0", lambda: st.gram_sharpness_nonuniformity(mse(), batch_size=0),
      err(ValueError, "batch_size")),
    C("gram-form-misspelled", lambda: st.gram_sharpness_nonuniformity(mse(), form="big"),
      err(ValueError, "form must be one of")),
    C("gram-cross-entropy", lambda: st.gram_sharpness_nonuniformity(ce()),
      err(ValueError, "square loss")),
    C("criterion-sharpness-nan", lambda: st.sgd_criterion(NAN, 0, 0.1, 4, 8),
      err(ValueError, "sharpness must be finite")),
    C("criterion-nonuniformity-negative", lambda: st.sgd_criterion(1.0, -1.0, 0.1, 4, 8),
      err(ValueError, "nonuniformity must be non-negative")),
    C("criterion-sharpness-string", lambda: st.sgd_criterion("1", 0.0, 0.1, 4, 8),
      err(ValueError, "sharpness must be a finite real")),
    C("criterion-lr-0", lambda: st.sgd_criterion(1.0, 0.0, 0, 4, 8), err(ValueError, "lr must")),
    C("criterion-n-0", lambda: st.sgd_criterion(1.0, 0.0, 0.1, 1, 0), err(ValueError, "n (the")),
    C("criterion-closed-form", lambda: st.sgd_criterion(2.0, 1.0, 0.5, 1, 2), gives(0.25)),
    C("critical-lr-batch-list-above-n", lambda: st.critical_lr(1.0, 1.0, [1, 9], 8),
      err(ValueError, "batch_size=9 exceeds")),
    C("critical-lr-batch-list-of-floats", lambda: st.critical_lr(1.0, 1.0, [2.5], 8),
      err(ValueError, "batch_size must be an integer"), was="wrong"),
    C("critical-lr-gd", lambda: st.critical_lr(2.0, 0.0, 8, 8), gives(1.0)),
    C("critical-lr-np-array-of-batches", lambda: st.critical_lr(
        5.0, 20.0, np.array([1, 8]), 8).tolist(), gives([2 * 5 / (25 + 400), 0.4])),
    C("necessary-bounds-lr-0", lambda: st.necessary_bounds(0, 4, 8), err(ValueError, "lr must")),
    C("necessary-bounds-batch-above-n", lambda: st.necessary_bounds(0.1, 9, 8),
      err(ValueError, "batch_size=9")),
    C("stability-region-num-1", lambda: st.stability_region(0.1, 4, 8, num=1),
      err(ValueError, "num must be an integer >= 2")),
    C("stability-region-num-np-int64", lambda: st.stability_region(
        0.1, 4, 8, num=np.int64(5)).sharpness.shape, gives((5,)), was="crash"),
    C("noise-factor-n-0", lambda: st.sgd_noise_factor(0, 1), err(ValueError, "n (the number")),
    C("noise-factor-n-float", lambda: st.sgd_noise_factor(8.0, 4), err(ValueError, "n (the")),
    C("noise-factor-np-ints", lambda: st.sgd_noise_factor(np.int64(8), np.int64(4)),
      gives(1 / 7)),
    C("noise-factor-single-sample", lambda: st.sgd_noise_factor(1, 1), gives(0.0)),
    C("threshold-optimizer-misspelled", lambda: st.threshold("adamw", 0.1),
      err(ValueError, "unknown optimizer 'adamw'")),
    C("threshold-lr-0", lambda: st.threshold("gd", 0), err(ValueError, "lr must be")),
    C("threshold-momentum-1", lambda: st.threshold("heavy_ball", 0.1, beta=1),
      err(ValueError, "beta must be a number in [0, 1)")),
    C("threshold-momentum-string", lambda: st.threshold("nesterov", 0.1, beta="0.9"),
      err(ValueError, "beta must be a number")),
    C("threshold-gd-takes-no-beta", lambda: st.threshold("gd", 0.1, beta=0.9),
      err(ValueError, "takes no hyperparameters")),
    C("threshold-wrong-keyword", lambda: st.threshold("heavy_ball", 0.1, momentum=0.9),
      err(ValueError, "takes only 'beta'")),
    C("threshold-adam-38-over-lr", lambda: st.threshold("adam", np.float32(0.5)), gives(76.0)),
]

# ================================================================================================
# noise
# ================================================================================================
nz = noise
NOISE = [
    C("tail-index-gaussian-is-2", lambda: nz.tail_index(torch.randn(
        10_000, generator=torch.Generator().manual_seed(0), dtype=F64), num_bootstrap=0).alpha,
      holds(lambda a: 1.85 < a < 2.3, "Gaussian noise has α ≈ 2")),
    C("tail-index-of-a-string", lambda: nz.tail_index("abc"),
      err(TypeError, "samples must be a torch tensor")),
    C("tail-index-of-None", lambda: nz.tail_index(None), err(TypeError, "samples must be")),
    C("tail-index-of-a-float", lambda: nz.tail_index(3.0), err(TypeError, "samples must be")),
    C("tail-index-list-of-strings", lambda: nz.tail_index(["a", "b"]),
      err(TypeError, "samples must be an array of real numbers"), was="crash"),
    C("tail-index-3d", lambda: nz.tail_index(torch.randn(4, 4, 4)),
      err(ValueError, "1-D (scalars) or 2-D")),
    C("tail-index-3-samples", lambda: nz.tail_index(torch.randn(3)),
      err(ValueError, "at least 4 samples")),
    C("tail-index-nan", lambda: nz.tail_index(torch.tensor([1.0, NAN] * 50)),
      err(ValueError, "NaN or infinite")),
    C("tail-index-bools", lambda: nz.tail_index(torch.tensor([True, False] * 50)),
      err(TypeError, "real numbers")),
    C("tail-index-complex", lambda: nz.tail_index(torch.randn(100, dtype=torch.complex64)),
      err(TypeError, "real numbers")),
    C("tail-index-constant", lambda: nz.tail_index(torch.ones(400)),
      err(ValueError, "all samples are equal")),
    C("tail-index-python-list", lambda: nz.tail_index(
        [1.0, -2.0, 3.0, -0.5, 2.2, 0.1] * 10, num_bootstrap=0).k1, gives(7)),
    *[C(f"tail-index-block-size-{name}", (lambda b=b: nz.tail_index(
        gaussian_noise(), block_size=b)), err(ValueError, "block_size must be an integer >= 2"))
      for name, b in [("1", 1), ("0", 0), ("1.5", 1.5), ("True", True), ("string", "10"),
                      ("too-big", 1001)]],
    C("tail-index-block-size-np-int64", lambda: nz.tail_index(
        gaussian_noise(), block_size=np.int64(10), num_bootstrap=0).k1, gives(10), was="crash"),
    *[C(f"tail-index-level-{name}", (lambda lv=lv: nz.tail_index(gaussian_noise(), level=lv)),
        err(ValueError, "level must lie in (0, 1)"),
        was="crash" if name in ("string", "None") else None)
      for name, lv in [("0", 0), ("1", 1), ("nan", NAN), ("True", True), ("string", "x"),
                       ("None", None)]],
    C("tail-index-level-np-float32", lambda: nz.tail_index(
        gaussian_noise(), level=np.float32(0.9), num_bootstrap=10).level,
      gives(float(np.float32(0.9)))),
    *[C(f"tail-index-num-bootstrap-{name}", (lambda nb=nb: nz.tail_index(
        gaussian_noise(), num_bootstrap=nb)), err(ValueError, "num_bootstrap must be an integer"),
        was="crash" if name == "True" else None)
      for name, nb in [("negative", -1), ("1.5", 1.5), ("True", True), ("None", None)]],
    C("tail-index-num-bootstrap-np-int64", lambda: nz.tail_index(
        gaussian_noise(), num_bootstrap=np.int64(10)).num_bootstrap, gives(10), was="crash"),
    *[C(f"tail-index-seed-{name}", (lambda s=s: nz.tail_index(gaussian_noise(), seed=s)),
        err(TypeError, "seed must be an int"), was="crash")
      for name, s in [("string", "x"), ("1.5", 1.5), ("None", None)]],
    C("tail-index-seed-np-int64", lambda: nz.tail_index(
        gaussian_noise(), seed=np.int64(3), num_bootstrap=5).seed, gives(3), was="crash"),
    C("tail-index-min-samples-string", lambda: nz.tail_index(gaussian_noise(), min_samples="x"),
      err(ValueError, "min_samples must be an integer"), was="crash"),
    C("fit-stable-max-samples-5", lambda: nz.fit_stable(gaussian_noise(), max_samples=5),
      err(ValueError, "max_samples must be an integer >= 10")),
    C("fit-stable-vectors", lambda: nz.fit_stable(gaussian_noise().reshape(-1, 2)),
      err(ValueError, "1-D samples")),
    C("noise-factor-closed-form", lambda: nz.noise_factor(8, 4), gives(1 / 7)),
    C("noise-factor-np-int64-n", lambda: nz.noise_factor(np.int64(8), 4), gives(1 / 7),
      was="crash"),
    C("noise-factor-n-1", lambda: nz.noise_factor(1, 1), err(ValueError, "n must be an integer")),
    C("noise-factor-batch-above-n", lambda: nz.noise_factor(8, 9),
      err(ValueError, "batch_size must be an integer in [1, n=8]")),
    C("noise-factor-batch-True", lambda: nz.noise_factor(8, True),
      err(ValueError, "batch_size must be an integer"), was="wrong"),
    C("noise-factor-with-replacement-above-n", lambda: nz.noise_factor(8, 9, replacement=True),
      gives(1 / 9)),
    C("batch-indices-0-batches", lambda: nz.batch_indices(8, 4, 0),
      err(ValueError, "num_batches must be an integer >= 1")),
    C("batch-indices-seed-string", lambda: nz.batch_indices(8, 4, 2, seed="x"),
      err(TypeError, "seed must be an int"), was="crash"),
    C("batch-indices-seed-float", lambda: nz.batch_indices(8, 4, 2, seed=1.5),
      err(TypeError, "seed must be an int"), was="crash"),
    C("minibatch-gradients-indices-list", lambda: nz.minibatch_gradients(mse(), [[0, 1]]),
      err(TypeError, "integer tensor")),
    C("minibatch-gradients-indices-float", lambda: nz.minibatch_gradients(
        mse(), torch.zeros(2, 2)), err(TypeError, "integer tensor")),
    C("minibatch-gradients-indices-flat", lambda: nz.minibatch_gradients(
        mse(), torch.tensor([0, 1])), err(TypeError, "shape (num_batches, batch_size)")),
    C("minibatch-gradients-index-out-of-range", lambda: nz.minibatch_gradients(
        mse(), torch.tensor([[0, 8]])), err(ValueError, "indices must lie in [0, n=8)")),
    C("minibatch-gradients-negative-index", lambda: nz.minibatch_gradients(
        mse(), torch.tensor([[0, -1]])), err(ValueError, "indices must lie in")),
    C("minibatch-gradients-empty-batches", lambda: nz.minibatch_gradients(
        mse(), torch.zeros(2, 0, dtype=torch.long)), err(ValueError, "at least one sample"),
      was="wrong"),
    C("minibatch-gradients-method-misspelled", lambda: nz.minibatch_gradients(
        mse(), torch.tensor([[0, 1]]), method="fast"), err(ValueError, "method must be one of")),
    C("minibatch-gradients-of-a-string", lambda: nz.minibatch_gradients(
        "x", torch.tensor([[0, 1]])), err(TypeError, "valleys.Objective")),
    C("minibatch-gradients-loop-of-a-string", lambda: nz.minibatch_gradients_loop(
        "x", torch.tensor([[0, 1]])), err(TypeError, "valleys.Objective"), was="crash"),
    C("minibatch-gradients-full-batch-is-the-gradient", lambda: nz.minibatch_gradients(
        mse(), torch.arange(8)[None])[0], gives(lambda: mse().gradient(), rel=1e-10)),
    C("minibatch-noise-batch-0", lambda: nz.minibatch_noise(mse(), batch_size=0, num_batches=4),
      err(ValueError, "batch_size must be an integer")),
    C("minibatch-noise-of-a-string", lambda: nz.minibatch_noise(
        "x", batch_size=2, num_batches=4), err(TypeError, "valleys.Objective"), was="crash"),
    C("minibatch-noise-full-batch-is-zero", lambda: float(nz.minibatch_noise(
        mse(), batch_size=8, num_batches=3).abs().max()), holds(lambda v: v < 1e-12)),
    C("noise-covariance-batch-0", lambda: nz.noise_covariance(mse(), batch_size=0),
      err(ValueError, "batch_size")),
    C("noise-statistics-k-0", lambda: nz.noise_statistics(mse(), batch_size=4, k=0),
      err(ValueError, "k must be an integer >= 1")),
    C("noise-statistics-k-np-int64", lambda: nz.noise_statistics(
        mse(), batch_size=4, k=np.int64(2)).top_eigenvalues.shape, gives((2,)), was="crash"),
    C("noise-statistics-method-misspelled", lambda: nz.noise_statistics(
        mse(), batch_size=4, method="svd"), err(ValueError, "method must be 'gram' or 'lanczos'")),
    C("noise-statistics-of-a-string", lambda: nz.noise_statistics("x", batch_size=4),
      err(TypeError, "valleys.Objective"), was="crash"),
    C("noise-statistics-batch-None", lambda: nz.noise_statistics(mse(), batch_size=None),
      err(ValueError, "batch_size")),
    C("subspace-overlap-shapes-differ", lambda: nz.subspace_overlap(
        torch.eye(3)[:, :2], torch.eye(3)), err(ValueError, "same shape")),
    C("subspace-overlap-flat-vectors", lambda: nz.subspace_overlap(torch.ones(3), torch.ones(3)),
      err(ValueError, "u[:, None]"), was="crash"),
    C("hessian-alignment-shapes-differ", lambda: nz.hessian_alignment(torch.eye(3), torch.eye(2)),
      err(ValueError, "same shape"), was="crash"),
    C("hessian-alignment-of-proportional-matrices", lambda: nz.hessian_alignment(
        torch.eye(3), 2 * torch.eye(3)), gives(1.0)),
    C("stable-alpha-0", lambda: nz.stable_rvs(0, 10), err(ValueError, "α must lie in (0, 2]")),
    C("stable-alpha-2.5", lambda: nz.stable_rvs(2.5, 10), err(ValueError, "α must lie")),
    C("stable-alpha-nan", lambda: nz.stable_rvs(NAN, 10), err(ValueError, "α must lie")),
    C("stable-negative-shape", lambda: nz.stable_rvs(1.5, -1),
      err(ValueError, "non-negative entries")),
    C("stable-skewness-2", lambda: nz.stable_rvs(1.5, 10, beta=2), err(ValueError, "β must")),
    C("isotropic-stable-alpha-3", lambda: nz.isotropic_stable(3, 10, 2),
      err(ValueError, "α must lie")),
    C("adam-averaging-beta1-1", lambda: nz.averaging_factor(1),
      err(ValueError, "beta1 must lie in [0, 1)")),
    C("adam-averaging-beta1-string", lambda: nz.averaging_factor("x"),
      err(ValueError, "beta1 must lie in [0, 1)"), was="crash"),
    C("adam-samples-negative-second-moment", lambda: nz.adam_noise_samples(
        torch.randn(10, 8, dtype=F64), -vec(8), average=False), err(ValueError, "non-negative")),
    C("adam-samples-second-moment-wrong-shape", lambda: nz.adam_noise_samples(
        torch.randn(10, 8, dtype=F64), vec(7), average=False), err(ValueError, "v must have")),
    C("adam-samples-too-few-for-burn-in", lambda: nz.adam_noise_samples(
        torch.randn(10, 8, dtype=F64)), err(ValueError, "leaves none of the 10 steps")),
    C("stationary-second-moment-batch-0", lambda: nz.stationary_second_moment(
        mse(), batch_size=0), err(ValueError, "batch_size")),
]

# ================================================================================================
# train
# ================================================================================================


def tr(**kw):
    return train(mse(), **{"steps": 2, **kw})


def one_gd_step(lr: float) -> torch.Tensor:
    theta = mse().parameters_vector()
    return theta - lr * mse().gradient(theta)


TRAIN = [
    C("train-a-string", lambda: train("x", steps=1), err(TypeError, "valleys.Objective"),
      was="crash"),
    C("train-config-is-a-string", lambda: train(mse(), "sgd"), err(TypeError, "TrainConfig"),
      was="crash"),
    C("train-config-is-a-dict", lambda: train(mse(), {"lr": 0.1}),
      err(TypeError, "pass settings as keywords"), was="crash"),
    C("train-unknown-setting", lambda: tr(lrr=0.1), err(TypeError, "'lrr'")),
    C("train-optimizer-misspelled", lambda: tr(optimizer="adamw"),
      err(ValueError, "unknown optimizer 'adamw'")),
    *[C(f"train-lr-{name}", (lambda lr=lr: tr(lr=lr)),
        err(ValueError, "learning rate lr must be a positive finite number"))
      for name, lr in [("0", 0), ("negative", -0.1), ("nan", NAN), ("inf", INF),
                       ("string", "0.1"), ("None", None), ("True", True),
                       ("tensor", torch.tensor(0.1))]],
    C("train-lr-np-float32-accepted", lambda: tr(lr=np.float32(0.1), steps=1).theta,
      gives(lambda: one_gd_step(float(np.float32(0.1))), rel=1e-12)),
    C("train-lr-np-float32-recorded-as-float", lambda: type(tr(lr=np.float32(0.1)).config.lr),
      holds(lambda t: t is float)),
    C("train-lr-np-int64", lambda: tr(lr=np.int64(1), steps=1).theta,
      gives(lambda: one_gd_step(1.0), rel=1e-12)),
    C("train-huge-lr-diverges", lambda: train(mse(), lr=1e6, steps=50).status,
      gives("diverged")),
    *[C(f"train-steps-{name}", (lambda s=s: tr(steps=s)), err(ValueError, "steps must be"),
        was="wrong" if name == "True" else None)
      for name, s in [("negative", -1), ("1.5", 1.5), ("string", "10"), ("None", None),
                      ("True", True)]],
    C("train-steps-np-int64", lambda: tr(steps=np.int64(3)).steps, gives(3), was="crash"),
    C("train-steps-0", lambda: (tr(steps=0).status, len(tr(steps=0).records)),
      gives(("max_steps", 1))),
    *[C(f"train-batch-{name}", (lambda b=b: tr(batch_size=b)),
        err(ValueError, "batch_size must be an integer in [1, n=8]"),
        was="wrong" if name == "True" else None)
      for name, b in [("0", 0), ("above-n", 9), ("2.5", 2.5), ("True", True), ("string", "4")]],
    C("train-batch-np-int64", lambda: tr(batch_size=np.int64(4)).config.batch_size, gives(4),
      was="crash"),
    C("train-batch-with-iterable-data", lambda: train(
        Objective(_linear(), "mse", [data()]), steps=2, batch_size=2),
      err(ValueError, "need the data as a pair of tensors")),
    C("train-sampling-misspelled", lambda: tr(batch_size=4, sampling="random"),
      err(ValueError, "unknown sampling 'random'")),
    *[C(f"train-momentum-{name}", (lambda m=m: tr(optimizer="momentum", momentum=m)),
        err(ValueError, "momentum must lie in [0, 1)"),
        was="crash" if name in ("string", "None") else None)
      for name, m in [("1", 1), ("negative", -0.1), ("nan", NAN), ("string", "x"),
                      ("None", None)]],
    C("train-betas-1", lambda: tr(optimizer="adam", betas=(0.9, 1.0)),
      err(ValueError, "betas must be a pair of numbers in [0, 1)")),
    C("train-betas-string", lambda: tr(optimizer="adam", betas="x"),
      err(ValueError, "betas must be a pair"), was="crash"),
    C("train-eps-negative", lambda: tr(optimizer="adam", eps=-1), err(ValueError, "eps must")),
    C("train-eps-nan", lambda: tr(optimizer="adam", eps=NAN), err(ValueError, "eps must")),
    C("train-record-every-0", lambda: tr(record_every=0),
      err(ValueError, "record_every must be an integer >= 1")),
    C("train-record-every-np-int64", lambda: len(tr(record_every=np.int64(1)).records),
      gives(3), was="crash"),
    C("train-accuracy-goal-0", lambda: train(ce(), steps=2, accuracy_goal=0),
      err(ValueError, "accuracy_goal must lie in (0, 1]")),
    C("train-accuracy-goal-2", lambda: train(ce(), steps=2, accuracy_goal=2),
      err(ValueError, "accuracy_goal must lie in (0, 1]")),
    C("train-accuracy-goal-string", lambda: train(ce(), steps=2, accuracy_goal="x"),
      err(ValueError, "accuracy_goal must lie"), was="crash"),
    C("train-accuracy-goal-of-a-regression", lambda: tr(accuracy_goal=0.5),
      err(ValueError, "accuracy_goal needs a classifier"), was="wrong"),
    C("train-regression-records-no-accuracy", lambda: "accuracy" in tr().records[0],
      holds(lambda v: v is False), was="wrong"),
    C("train-loss-goal-string", lambda: tr(loss_goal="x"),
      err(ValueError, "loss_goal must be a finite real"), was="crash"),
    C("train-loss-goal-nan", lambda: tr(loss_goal=NAN),
      err(ValueError, "loss_goal must be a finite real"), was="wrong"),
    C("train-divergence-factor-0", lambda: tr(divergence_factor=0),
      err(ValueError, "divergence_factor must be a positive")),
    *[C(f"train-seed-{name}", (lambda s=s: tr(seed=s, batch_size=2)),
        err(TypeError, "seed must be an int"), was="crash")
      for name, s in [("string", "x"), ("1.5", 1.5), ("None", None)]],
    C("train-seed-np-int64", lambda: tr(seed=np.int64(3), batch_size=2).theta,
      gives(lambda: tr(seed=3, batch_size=2).theta), was="crash"),
    C("train-theta-wrong-shape", lambda: tr(theta=torch.zeros(3, dtype=F64)),
      err(ValueError, "shape (8,)")),
    C("train-from-nan-theta-diverges", lambda: tr(theta=vec(8, NAN)).status, gives("diverged")),
    C("train-callback-not-callable", lambda: tr(callbacks=[3]),
      err(TypeError, "every callback must be callable"), was="crash"),
    C("train-callbacks-not-a-list", lambda: tr(callbacks=lambda step, theta: {}),
      err(TypeError, "wrap a single one in a list"), was="crash"),
    C("train-progress-not-callable", lambda: tr(progress=3),
      err(TypeError, "progress must be a function"), was="crash"),
    C("train-config-object-plus-override", lambda: train(
        mse(), TrainConfig(lr=0.05, steps=5), steps=1).theta,
      gives(lambda: one_gd_step(0.05), rel=1e-12)),
    C("tracker-of-a-string", lambda: SharpnessTracker("x"), err(TypeError, "valleys.Objective")),
    C("tracker-k-0", lambda: SharpnessTracker(mse(), k=0),
      err(ValueError, "k must be a positive integer")),
    C("tracker-k-equals-p", lambda: SharpnessTracker(mse(), k=8),
      err(ValueError, "smaller than the number of parameters")),
    C("tracker-which-smallest", lambda: SharpnessTracker(mse(), which="smallest"),
      err(ValueError, "which must be 'largest' or 'magnitude'")),
    C("tracker-tol-0", lambda: SharpnessTracker(mse(), tol=0),
      err(ValueError, "tol must be a number in (0, 1)"), was="wrong"),
    C("tracker-seed-string", lambda: SharpnessTracker(mse(), seed="x"),
      err(TypeError, "seed must be an int"), was="crash"),
    C("tracker-every-0", lambda: SharpnessTracker(mse(), every=0),
      err(ValueError, "every must be a positive integer")),
    C("tracker-warm-noise-1", lambda: SharpnessTracker(mse(), warm_noise=1),
      err(ValueError, "warm_noise must lie in [0, 1)")),
    C("tracker-records-the-sharpness", lambda: train(
        mse(), steps=1, callbacks=[SharpnessTracker(mse(), tol=1e-8)]).records[0]["sharpness"],
      gives(linear_sharpness, rel=1e-6)),
    C("tracker-at-a-nan-theta-records-nan", lambda: math.isnan(train(
        mse(), steps=1, theta=vec(8, NAN), callbacks=[SharpnessTracker(mse())]
    ).records[0]["sharpness"]), holds(lambda v: v is True), was="crash"),
    C("flow-times-empty", lambda: gradient_flow(mse(), []),
      err(ValueError, "times must be a non-empty")),
    C("flow-times-decreasing", lambda: gradient_flow(mse(), [1.0, 0.5]),
      err(ValueError, "non-decreasing")),
    C("flow-times-nan", lambda: gradient_flow(mse(), [NAN]), err(ValueError, "finite times")),
    C("flow-alpha-0", lambda: gradient_flow(mse(), [0.1], alpha=0),
      err(ValueError, "alpha must be a positive")),
    C("flow-of-a-string", lambda: GradientFlow("x"), err(TypeError, "valleys.Objective")),
    C("flow-sharpness-every-0", lambda: gradient_flow(mse(), [0.1], sharpness_every=0),
      err(ValueError, "sharpness_every must be a positive integer")),
]

# ================================================================================================
# landscape, meanfield, games, sde, smoothness, models, problems, sweeps
# ================================================================================================
ls, mf = landscape, meanfield


def particles() -> meanfield.ParticleMeasure:
    return meanfield.ParticleMeasure(torch.randn(6, 2, generator=torch.Generator().manual_seed(0),
                                                 dtype=F64))


def quadratic_field():
    return meanfield.autograd_field(lambda x, w: (x**2).sum(1).mean())


def two_layer_data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, generator=g, dtype=F64), torch.randn(8, generator=g, dtype=F64)


def two_layer_train(**kw):
    a, W = mf.init_two_layer(4, 3)
    Xs, ys = two_layer_data()
    return mf.train_two_layer(a, W, kw.pop("X", Xs), kw.pop("y", ys),
                              **{"lr": 0.1, "steps": 1, **kw})


STATE = torch.zeros(1, 2, dtype=F64)

ELSEWHERE = [
    C("line-direction-wrong-shape", lambda: ls.loss_along_line(mse(), vec(3), [0.0, 1.0]),
      err(ValueError, "direction must be a flat vector of shape (8,)")),
    C("line-direction-float32", lambda: ls.loss_along_line(
        mse(), vec(8, dtype=torch.float32), [0.0]), err(TypeError, "direction has dtype")),
    C("line-direction-nan", lambda: ls.loss_along_line(mse(), vec(8, NAN), [0.0]),
      err(ValueError, "direction contains NaN")),
    C("line-ts-empty", lambda: ls.loss_along_line(mse(), vec(8), []),
      err(ValueError, "ts must be a non-empty 1-D sequence")),
    C("line-ts-nan", lambda: ls.loss_along_line(mse(), vec(8), [0.0, NAN]),
      err(ValueError, "ts must be finite")),
    C("line-ts-string", lambda: ls.loss_along_line(mse(), vec(8), "abc"),
      err(TypeError, "ts must be a 1-D sequence of real numbers"), was="crash"),
    C("line-method-misspelled", lambda: ls.loss_along_line(mse(), vec(8), [0.0], method="jit"),
      err(ValueError, "method must be one of")),
    C("line-points-per-chunk-0", lambda: ls.loss_along_line(
        mse(), vec(8), [0.0], points_per_chunk=0), err(ValueError, "points_per_chunk")),
    C("line-of-a-string", lambda: ls.loss_along_line("x", vec(8), [0.0]),
      err(TypeError, "objective must be a valleys.Objective"), was="crash"),
    C("line-at-zero-is-the-loss", lambda: ls.loss_along_line(mse(), vec(8), [0.0]).losses,
      gives(lambda: [float(mse().loss())])),
    C("plane-second-direction-wrong-shape", lambda: ls.loss_on_plane(
        mse(), vec(8), vec(3), [0.0], [0.0]), err(ValueError, "d2 must be a flat vector")),
    C("interpolate-endpoint-wrong-shape", lambda: ls.interpolate(mse(), vec(8), vec(3)),
      err(ValueError, "theta_b must be a flat vector")),
    C("random-direction-normalization-misspelled", lambda: ls.random_direction(
        mse(), normalization="filters", bias_bn="zero", seed=0),
      err(ValueError, "normalization must be one of")),
    C("random-direction-bias-bn-misspelled", lambda: ls.random_direction(
        mse(), normalization="filter", bias_bn="keep", seed=0),
      err(ValueError, "bias_bn must be one of")),
    C("random-direction-unseeded", lambda: ls.random_direction(
        mse(), normalization="filter", bias_bn="zero"), err(ValueError, "seed=")),
    C("random-direction-seed-np-int64", lambda: ls.random_direction(
        mse(), normalization="filter", bias_bn="zero", seed=np.int64(0)),
      gives(lambda: ls.random_direction(mse(), normalization="filter", bias_bn="zero", seed=0)),
      was="crash"),
    C("random-direction-of-a-string", lambda: ls.random_direction(
        "x", normalization="filter", bias_bn="zero", seed=0),
      err(TypeError, "objective must be a valleys.Objective"), was="crash"),
    C("orthogonalize-parallel", lambda: ls.orthogonalize(vec(3), vec(3)),
      err(ValueError, "v is parallel to u")),
    C("orthogonalize-sizes-differ", lambda: ls.orthogonalize(vec(3), vec(2)),
      err(ValueError, "same shape"), was="crash"),
    C("top-eigen-directions-k-0", lambda: ls.top_eigen_directions(mse(), k=0),
      err(ValueError, "k must be an integer")),
    C("growth-lengths-differ", lambda: ls.growth_exponent([0.1, 0.2, 0.3], [1.0, 2.0]),
      err(ValueError, "same shape")),
    C("growth-nan", lambda: ls.growth_exponent([0.1, 0.2, 0.3], [1.0, NAN, 3.0]),
      err(ValueError, "must be finite")),
    C("growth-one-point", lambda: ls.growth_exponent([0.1], [0.01]),
      err(ValueError, "at least 2 points")),
    C("growth-quadratic-is-2", lambda: ls.growth_exponent(
        [0.1, 0.2, 0.4, 0.8], [0.01, 0.04, 0.16, 0.64], baseline=0.0), gives(2.0)),
    C("growth-profile-tolerance-negative", lambda: ls.growth_profile(
        [0.1, 0.2, 0.4], [0.01, 0.04, 0.16], tolerance=-1), err(ValueError, "tolerance")),
    C("sqrt-valley-eps-negative", lambda: ls.SqrtValley(eps=-1),
      err(ValueError, "eps must be a positive")),
    C("sqrt-loss-curvature-nan", lambda: ls.SqrtLoss(curvature=NAN),
      err(ValueError, "curvature must be a positive finite")),
    C("batched-loss-flat-thetas", lambda: ls.batched_loss(mse(), vec(8)),
      err(ValueError, "thetas must have shape (P, 8)")),
    C("batched-loss-of-a-string", lambda: ls.batched_loss("x", torch.zeros(1, 8, dtype=F64)),
      err(TypeError, "objective must be a valleys.Objective"), was="crash"),
    C("particles-flat", lambda: mf.ParticleMeasure(vec(5)), err(ValueError, "x[:, None]")),
    C("particles-empty", lambda: mf.ParticleMeasure(torch.ones(0, 2, dtype=F64)),
      err(ValueError, "n >= 1")),
    C("particles-list", lambda: mf.ParticleMeasure([[1.0, 2.0]]),
      err(TypeError, "positions must be a torch.Tensor")),
    C("particles-negative-weights", lambda: mf.ParticleMeasure(
        torch.ones(5, 2, dtype=F64), -vec(5)), err(ValueError, "non-negative")),
    C("particles-weights-wrong-length", lambda: mf.ParticleMeasure(
        torch.ones(5, 2, dtype=F64), vec(4)), err(ValueError, "weights must have shape (5,)")),
    C("flow-method-misspelled", lambda: mf.simulate(
        particles(), quadratic_field(), lr=0.1, steps=1, method="wfr2"),
      err(ValueError, "unknown method 'wfr2'")),
    C("flow-lr-0", lambda: mf.simulate(particles(), quadratic_field(), lr=0, steps=1),
      err(ValueError, "lr must be a positive")),
    C("flow-negative-temperature", lambda: mf.simulate(
        particles(), quadratic_field(), lr=0.1, steps=1, method="langevin", temperature=-1),
      err(ValueError, "temperature must be >= 0")),
    C("flow-of-a-tensor", lambda: mf.simulate(torch.ones(3, 2), quadratic_field(), lr=0.1,
                                              steps=1),
      err(TypeError, "ParticleMeasure(x)"), was="crash"),
    C("flow-from-nan-particles", lambda: mf.simulate(
        mf.ParticleMeasure(torch.full((3, 2), NAN, dtype=F64)), quadratic_field(), lr=0.1,
        steps=1), err(ValueError, "initial measure's positions contain NaN"), was="wrong"),
    C("flow-lr-np-float32", lambda: mf.simulate(
        particles(), quadratic_field(), lr=np.float32(0.1), steps=1).status, gives("completed")),
    C("mmd-kernel-misspelled", lambda: mf.mmd(particles(), particles(), kernel="gauss"),
      err(ValueError, "unknown kernel 'gauss'")),
    C("mmd-bandwidth-0", lambda: mf.mmd(particles(), particles(), bandwidth=0),
      err(ValueError, "bandwidth must be > 0")),
    C("mmd-dimensions-differ", lambda: mf.mmd(particles(), mf.ParticleMeasure(
        torch.ones(2, 3, dtype=F64))), err(ValueError, "different dimensions")),
    C("mmd-of-a-measure-with-itself", lambda: mf.mmd(particles(), particles()), gives(0.0)),
    C("wasserstein-p-0", lambda: mf.wasserstein(particles(), particles(), p=0),
      err(ValueError, "p must be >= 1")),
    C("sinkhorn-reg-0", lambda: mf.sinkhorn(particles(), particles(), reg=0),
      err(ValueError, "reg must be > 0")),
    C("two-layer-width-0", lambda: mf.init_two_layer(0, 3),
      err(ValueError, "m (the width) must be an integer >= 1")),
    C("two-layer-width-4.5", lambda: mf.init_two_layer(4.5, 3),
      err(ValueError, "m (the width) must be an integer"), was="crash"),
    C("two-layer-scale-nan", lambda: mf.init_two_layer(4, 3, scale_a=NAN),
      err(ValueError, "scale_a must be a finite real"), was="wrong"),
    C("two-layer-width-np-int64", lambda: mf.init_two_layer(np.int64(4), 3)[1].shape,
      gives((4, 3))),
    C("two-layer-scaling-misspelled", lambda: mf.barron_norm(
        vec(4), torch.ones(4, 3, dtype=F64), scaling="ntk2"),
      err(ValueError, "unknown scaling 'ntk2'")),
    C("two-layer-path-norm-shapes", lambda: mf.path_norm(vec(4), torch.ones(5, 3, dtype=F64)),
      err(ValueError, "a of shape (m,) and W of shape (m, d)")),
    C("two-layer-bound-n-0", lambda: mf.a_priori_bound(1.0, 4, 0, 3),
      err(ValueError, "need n >= 1")),
    C("two-layer-train-lr-0", lambda: two_layer_train(lr=0), err(ValueError, "need lr > 0")),
    C("two-layer-train-activation-misspelled", lambda: two_layer_train(activation="gelu2"),
      err(ValueError, "unknown activation 'gelu2'")),
    C("two-layer-train-targets-short", lambda: two_layer_train(y=two_layer_data()[1][:5]),
      err(ValueError, "y must have shape (8,)")),
    C("two-layer-train-nan-targets", lambda: two_layer_train(y=two_layer_data()[1] * NAN),
      err(ValueError, "y contains NaN"), was="wrong"),
    C("two-layer-train-lr-np-float32", lambda: two_layer_train(lr=np.float32(0.1)).status,
      gives("completed")),
    C("two-layer-predict-wrong-inputs", lambda: mf.two_layer_predict(
        *mf.init_two_layer(4, 3), torch.randn(8, 4, dtype=F64)),
      err(ValueError, "X must have shape (n, 3)")),
    C("game-method-misspelled", lambda: games.solve(
        games.rock_paper_scissors(), torch.ones(3, 3), torch.ones(3, 3), "gda",
        temperature=0.1, steps=1, lr=0.1), err(ValueError, "unknown method 'gda'")),
    C("matrix-game-vector", lambda: games.MatrixGame(torch.ones(3)),
      err(ValueError, "M must be a matrix")),
    C("matrix-game-nan", lambda: games.MatrixGame(torch.full((2, 2), NAN)),
      err(ValueError, "M contains NaN"), was="wrong"),
    C("torus-period-0", lambda: games.Torus(period=0), err(ValueError, "period must be > 0")),
    C("translation-game-kind-misspelled", lambda: games.TranslationGame(kind="cos2"),
      err(ValueError, "kind must be 'sin' or 'cos'")),
    C("torus-histogram-0-bins", lambda: games.torus_histogram(torch.rand(10, 1), bins=0),
      err(ValueError, "bins must be an integer >= 1"), was="crash"),
    C("torus-histogram-2.5-bins", lambda: games.torus_histogram(torch.rand(10, 1), bins=2.5),
      err(ValueError, "bins must be an integer"), was="crash"),
    C("quadratic-bilinear-negative-confinement", lambda: games.QuadraticBilinear(
        torch.eye(2), a=-1), err(ValueError, "a and b must be > 0")),
    C("sde-steps-negative", lambda: sde.simulate(lambda t: t, STATE, steps=-1, dt=0.1),
      err(ValueError, "steps must be a non-negative integer")),
    C("sde-dt-0", lambda: sde.simulate(lambda t: t, STATE, steps=1, dt=0),
      err(ValueError, "dt must be a positive number")),
    C("sde-dt-string", lambda: sde.simulate(lambda t: t, STATE, steps=1, dt="0.1"),
      err(ValueError, "dt must be a positive number")),
    C("sde-alpha-3", lambda: sde.simulate(lambda t: t, STATE, steps=1, dt=0.1, alpha=3),
      err(ValueError, "alpha must lie in (0, 2]")),
    C("sde-epsilon-negative", lambda: sde.simulate(lambda t: t, STATE, steps=1, dt=0.1,
                                                   epsilon=-1),
      err(ValueError, "epsilon must be a non-negative")),
    C("sde-noise-misspelled", lambda: sde.simulate(lambda t: t, STATE, steps=1, dt=0.1,
                                                   noise="indep"),
      err(ValueError, "noise must be 'independent' or 'isotropic'")),
    C("sde-flat-start", lambda: sde.simulate(lambda t: t, vec(2), steps=1, dt=0.1),
      err(ValueError, "theta0 must be a tensor of shape (paths, dim)")),
    C("sde-nan-start", lambda: sde.simulate(lambda t: t, STATE * NAN, steps=1, dt=0.1),
      err(ValueError, "theta0 contains NaN"), was="wrong"),
    C("sde-gradient-wrong-shape", lambda: sde.simulate(lambda t: t[:, :1], STATE, steps=1,
                                                       dt=0.1),
      err(ValueError, "grad returned shape (1, 1)")),
    C("sde-levy-constant-alpha-0", lambda: sde.levy_constant(0),
      err(ValueError, "α must lie in (0, 2]"), was="wrong"),
    C("sde-levy-constant-alpha-2.5", lambda: sde.levy_constant(2.5),
      err(ValueError, "α must lie in (0, 2]"), was="wrong"),
    C("sde-levy-constant-cauchy", lambda: sde.levy_constant(1.0), gives(1 / math.pi)),
    C("sde-exit-time-negative-distance", lambda: sde.levy_exit_time(1.5, 0.1, (-1.0, 1.0)),
      err(ValueError, "distances must be the positive"), was="wrong"),
    C("sde-exit-time-alpha-2", lambda: sde.levy_exit_time(2.0, 0.1, (1.0, 1.0)),
      err(ValueError, "0 < α < 2")),
    C("sde-exit-basin-reversed", lambda: sde.exit_times(
        lambda t: t, torch.zeros(1, dtype=F64), (1.0, -1.0), num_paths=2, max_steps=2),
      err(ValueError, "is not inside the basin")),
    C("sde-double-well-negative-width", lambda: sde.DoubleWell(width_left=-1),
      err(ValueError, "width_left must be a positive")),
    C("smoothness-normalization-misspelled", lambda: smoothness.input_gradient_norm(
        _linear(), X(), normalization="sample"), err(ValueError, "normalization must be one of")),
    C("smoothness-k-0", lambda: smoothness.input_gradient_norm(_linear(), X(), k=0),
      err(ValueError, "k must be a positive finite number")),
    C("smoothness-inputs-wrong-width", lambda: smoothness.input_gradient_norm(
        _linear(), torch.randn(8, 4, dtype=F64)), err(ValueError, "inputs of shape (8, 4)")),
    C("smoothness-module-without-inputs", lambda: smoothness.input_gradient_norm(_linear()),
      err(TypeError, "pass the inputs X")),
    C("smoothness-nan-inputs", lambda: smoothness.input_gradient_norm(_linear(), X() * NAN),
      err(ValueError, "inputs contain NaN")),
    C("smoothness-of-a-string", lambda: smoothness.input_gradient_norm("x", X()),
      err(TypeError, "valleys.Objective or a torch.nn.Module")),
    C("smoothness-linear-model-closed-form", lambda: smoothness.input_gradient_norm(
        _linear(), X(), k=1, normalization="sum"),
      gives(lambda: math.sqrt(8 * float((_linear().weight ** 2).sum())), rel=1e-10)),
    C("attack-misspelled", lambda: smoothness.adversarial_accuracy(
        _linear(), X(), LABELS, attack="cw"), err(ValueError, "attack must be one of")),
    C("attack-norm-misspelled", lambda: smoothness.adversarial_accuracy(
        _linear(), X(), LABELS, norm="l3"), err(ValueError, "norm must be one of")),
    C("attack-negative-radius", lambda: smoothness.adversarial_accuracy(
        _linear(), X(), LABELS, radii=(-0.1,)), err(ValueError, "non-negative finite")),
    C("attack-labels-short", lambda: smoothness.adversarial_accuracy(
        _linear(), X(), LABELS[:5]), err(ValueError, "same number of samples")),
    C("fgsm-radius-nan", lambda: smoothness.fgsm(_linear(), X(), LABELS, eps=NAN),
      err(ValueError, "radius must be a non-negative finite")),
    C("pgd-clamp-reversed", lambda: smoothness.pgd(_linear(), X(), LABELS, eps=0.1,
                                                   clamp=(1.0, 0.0)),
      err(ValueError, "clamp needs low < high")),
    C("first-layer-unknown", lambda: smoothness.find_first_layer(_linear(), "nope"),
      err(ValueError, "is not a parameter of the model")),
    C("first-layer-bound-matrix-misspelled", lambda: smoothness.first_layer_bound(
        mse(), matrix="fisher"), err(ValueError, "matrix must be 'hessian' or 'ggn'")),
    C("mlp-one-width", lambda: models.MLP([3]), err(ValueError, "at least 2 entries")),
    C("mlp-activation-misspelled", lambda: models.MLP([3, 4, 2], activation="gelu2"),
      err(ValueError, "unknown activation 'gelu2'")),
    C("mlp-width-0", lambda: models.MLP([3, 0, 2]), err(ValueError, "positive integer")),
    C("mlp-widths-string", lambda: models.MLP("3,4"), err(TypeError, "widths must be")),
    C("cnn-0-classes", lambda: models.SmallCNN((1, 8, 8), 0),
      err(ValueError, "num_classes must be a positive integer")),
    C("resnet-negative-blocks", lambda: models.SmallResNet((1, 8, 8), 3, num_blocks=-1),
      err(ValueError, "num_blocks must be a non-negative")),
    C("num-parameters-of-a-string", lambda: models.num_parameters("x"),
      err(TypeError, "model must be a torch.nn.Module"), was="crash"),
    C("num-parameters-linear", lambda: models.num_parameters(_linear()), gives(8)),
    C("problem-unknown", lambda: load_problem("nope"), err(ValueError, "unknown problem 'nope'")),
    C("problem-device-tpu", lambda: load_problem("digits-mlp", trained=False, device="tpu"),
      err(ValueError, "unknown device 'tpu'"), was="crash"),
    C("problem-device-cuda", lambda: load_problem("digits-mlp", trained=False, device="cuda"),
      holds(lambda p: p.model is not None) if torch.cuda.is_available()
      else err(ValueError, "CUDA is not available"), was="crash"),
    C("problem-dtype-int64", lambda: load_problem("digits-mlp", trained=False,
                                                  dtype=torch.int64),
      err(TypeError, "dtype must be a floating torch.dtype"), was="crash"),
    C("problem-dtype-string", lambda: load_problem("digits-mlp", trained=False,
                                                   dtype="float64"),
      err(TypeError, "dtype must be a floating torch.dtype"), was="crash"),
    C("problem-num-samples-for-digits", lambda: load_problem(
        "digits-mlp", trained=False, num_samples=100), err(ValueError, "MNIST-1D problems only")),
    C("problem-seed-string", lambda: load_problem("digits-mlp", trained=False, seed="x"),
      err(ValueError, "seed must be a non-negative integer")),
    C("sweep-executor-misspelled", lambda: sweeps.run_sweep(
        lambda c: {}, [{"a": 1}], "unused.sqlite", name="x", executor="gpu"),
      err(ValueError, "unknown executor 'gpu'")),
    C("sweep-empty-name", lambda: sweeps.run_sweep(lambda c: {}, [{"a": 1}], "unused.sqlite",
                                                   name=""),
      err(ValueError, "name must be a non-empty string")),
    C("sweep-max-workers-0", lambda: sweeps.run_sweep(
        lambda c: {}, [{"a": 1}], "unused.sqlite", name="x", max_workers=0),
      err(ValueError, "max_workers must be a positive int")),
    C("sweep-no-configs", lambda: sweeps.run_sweep(lambda c: {}, [], "unused.sqlite", name="x"),
      err(ValueError, "no configs to run")),
    C("sweep-fn-not-callable", lambda: sweeps.run_sweep(3, [{"a": 1}], "unused.sqlite",
                                                        name="x"),
      err(TypeError, "fn must be callable")),
    C("sweep-configs-an-int", lambda: sweeps.run_sweep(lambda c: {}, 3, "unused.sqlite",
                                                       name="x"),
      err(TypeError, "configs"), was="crash"),
    C("sweep-store-is-a-folder", lambda: sweeps.ResultsStore("."),
      err(ValueError, "is a folder")),
    C("sweep-config-with-nan", lambda: sweeps.run_id({"a": NAN}, "s"),
      err(TypeError, "finite numbers")),
    C("sweep-config-not-json", lambda: sweeps.run_id({"a": object()}, "s"),
      err(TypeError, "JSON-serializable")),
    C("sweep-grid-string-is-one-value", lambda: sweeps.grid(eta="abc"),
      gives([{"eta": "abc"}])),
]

# ================================================================================================
# experiments driver (valleys.experiments.run); nothing here measures anything
# ================================================================================================


def reproduce(**kw):
    """``run("linear-stability", ...)`` with one argument bad; the output goes to ``out``."""
    return run_experiment(kw.pop("experiment", "linear-stability"), kw.pop("out", "unused"),
                          progress=False, **kw)


DRIVER = [
    C("reproduce-unknown-name", lambda: reproduce(experiment="nope"),
      err(ValueError, "unknown experiment 'nope'; available:")),
    C("reproduce-name-None", lambda: reproduce(experiment=None),
      err(TypeError, "registered name"), was="crash"),
    C("reproduce-name-int", lambda: reproduce(experiment=3),
      err(TypeError, "registered name"), was="crash"),
    C("load-experiment-None", lambda: load_experiment(None), err(ValueError, "unknown experiment")),
    C("reproduce-preset-misspelled", lambda: reproduce(preset="medium"),
      err(ValueError, "unknown preset 'medium'")),
    C("reproduce-preset-int", lambda: reproduce(preset=3), err(TypeError, "preset must be")),
    C("reproduce-preset-None", lambda: reproduce(preset=None), err(TypeError, "preset must be")),
    *[C(f"reproduce-seeds-{name}", (lambda s=s: reproduce(seeds=s)), err(ValueError, message))
      for name, s, message in [
          ("empty", [], "at least one seed"), ("negative", [-1], "non-negative integers"),
          ("repeated", [1, 1], "seeds repeat"), ("string-item", ["a"], "non-negative integers"),
          ("float", [1.5], "non-negative integers"), ("True", [True], "non-negative integers"),
          ("None-item", [0, None], "non-negative integers"),
          ("np-int64-repeated", [np.int64(1), np.int64(1)], "seeds repeat")]],
    C("reproduce-seeds-a-string", lambda: reproduce(seeds="0,1"),
      err(TypeError, "seeds must be a list"), was="crash"),
    C("reproduce-seeds-an-int", lambda: reproduce(seeds=3),
      err(TypeError, "seeds must be a list"), was="crash"),
    *[C(f"reproduce-device-{name}", (lambda d=d: reproduce(seeds=[0], device=d)),
        err(ValueError, message))
      for name, d, message in [
          ("tpu", "tpu", "unknown device 'tpu'"), ("int-3", 3, "unknown device 3"),
          ("None", None, "unknown device None"), ("meta", "meta", "valleys runs on cpu")]
      + ([] if torch.cuda.is_available() else [
          ("cuda", "cuda", "CUDA is not available"), ("cuda-1", "cuda:1", "CUDA is not")])],
    C("reproduce-out-None", lambda: reproduce(seeds=[0], out=None),
      err(TypeError, "output folder must be a path"), was="crash"),
    C("reproduce-out-int", lambda: reproduce(seeds=[0], out=3),
      err(TypeError, "output folder must be a path"), was="crash"),
]

CASES = OBJECTIVE + OPERATORS + LINALG + SHARPNESS + STABILITY + NOISE + TRAIN + ELSEWHERE + DRIVER


def test_the_battery_is_large_and_its_ids_unique():
    ids = [case.id for case in CASES]
    assert len(ids) >= 220
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})


@pytest.mark.parametrize("case", [case.param() for case in CASES])
def test_bad_input(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs ("unused.sqlite", "unused/") land here
    case.expected.check(case.call)


def test_output_under_a_regular_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(ValueError, match="is a file, not a folder"):
            reproduce(seeds=[0], out=out)


# ================================================================================================
# the command line: `valleys ...` through its real entry point (cli.main), in process
# ================================================================================================
CLI_ERROR = [  # (id, argv, fragment): exit 2 and one line "error: ..." on stderr
    ("curvature-k-0", ["curvature", "--k", "0"], "--k must be positive"),
    ("curvature-k-negative", ["curvature", "--k", "-3"], "--k must be positive"),
    ("curvature-probes-0", ["curvature", "--probes", "0"], "--probes must be positive"),
    ("curvature-lanczos-steps-0", ["curvature", "--lanczos-steps", "0"], "--lanczos-steps"),
    ("curvature-chunk-size-0", ["curvature", "--chunk-size", "0"], "--chunk-size must be"),
    ("curvature-num-samples-negative", ["curvature", "--problem", "mnist1d-mlp",
                                        "--num-samples", "-5"], "--num-samples must be"),
    ("curvature-tol-0", ["curvature", "--tol", "0"], "--tol must be a positive finite"),
    ("curvature-tol-nan", ["curvature", "--tol", "nan"], "--tol must be a positive finite"),
    ("curvature-trace-matvecs-0", ["curvature", "--trace-matvecs", "0"],
     "--trace-matvecs must be at least 3"),
    ("curvature-hutchinson-1-matvec", ["curvature", "--trace-method", "hutchinson",
                                       "--trace-matvecs", "1"], "at least 2"),
    ("curvature-seed-negative", ["curvature", "--seed", "-1"], "--seed must be"),
    ("curvature-device-cuda", ["curvature", "--device", "cuda"],
     "CUDA is not available" if not torch.cuda.is_available() else None),
    ("curvature-device-tpu", ["curvature", "--device", "tpu"], "unknown device 'tpu'"),
    ("curvature-device-3", ["curvature", "--device", "3"], "unknown device '3'"),
    ("curvature-dtype-float16", ["curvature", "--dtype", "float16"], "float32 or float64"),
    ("curvature-trace-method-misspelled", ["curvature", "--trace-method", "magic"],
     "--trace-method must be one of"),
    ("curvature-problem-unknown", ["curvature", "--problem", "nope"], "unknown problem 'nope'"),
    ("curvature-out-under-a-file", ["curvature", "--out", "{tmp}/file/sub"],
     "is a file, not a folder"),
    ("reproduce-unknown", ["reproduce", "nope"], "unknown experiment 'nope'"),
    ("reproduce-seeds-letter", ["reproduce", "linear-stability", "--seeds", "1,a"],
     "give comma-separated integers"),
    ("reproduce-seeds-float", ["reproduce", "linear-stability", "--seeds", "1.5"],
     "give comma-separated integers"),
    ("reproduce-seeds-negative", ["reproduce", "linear-stability", "--seeds", "-1"],
     "non-negative"),
    ("reproduce-seeds-repeated", ["reproduce", "linear-stability", "--seeds", "0,0"],
     "seeds repeat"),
    ("reproduce-seeds-empty", ["reproduce", "linear-stability", "--seeds", ""],
     "at least one seed"),
    ("reproduce-seeds-only-commas", ["reproduce", "linear-stability", "--seeds", ",,"],
     "at least one seed"),
    ("reproduce-preset-misspelled", ["reproduce", "linear-stability", "--preset", "medium"],
     "unknown preset 'medium'"),
    ("reproduce-quick-and-full", ["reproduce", "linear-stability", "--quick", "--preset", "full"],
     "--quick contradicts --preset full"),
    ("reproduce-device-tpu", ["reproduce", "linear-stability", "--device", "tpu"],
     "unknown device 'tpu'"),
    ("reproduce-device-cuda", ["reproduce", "linear-stability", "--device", "cuda"],
     "CUDA is not available" if not torch.cuda.is_available() else None),
    ("reproduce-out-under-a-file", ["reproduce", "linear-stability", "--out", "{tmp}/file/sub"],
     "is a file, not a folder"),
    ("reproduce-out-is-a-file", ["reproduce", "linear-stability", "--out", "{tmp}/file"],
     "is a file, not a folder"),
    ("results-missing-folder", ["results", "{tmp}/missing"], "no */summary.json"),
    ("results-of-a-file", ["results", "{tmp}/file"], "is a file, not a folder"),
]

CLI_USAGE = [  # (id, argv, fragment): click's usage errors, exit 2 and no traceback
    ("unknown-command", ["nope"], "No such command 'nope'"),
    ("curvature-k-not-a-number", ["curvature", "--k", "abc"], "Invalid value for '--k'"),
    ("curvature-tol-not-a-number", ["curvature", "--tol", "small"], "Invalid value for"),
    ("curvature-unknown-option", ["curvature", "--bogus"], "No such option: --bogus"),
    ("curvature-option-without-value", ["curvature", "--k"], "requires an argument"),
    ("problems-extra-argument", ["problems", "extra"], "unexpected extra argument"),
]


def _cli(argv: list[str], tmp_path, monkeypatch, capsys) -> tuple[int, str]:
    from valleys import cli

    (tmp_path / "file").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] in ("curvature", "reproduce") and "--out" not in argv:
        argv[1:1] = ["--out", str(tmp_path / "out")]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VALLEYS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["valleys", *argv])
    with pytest.raises(SystemExit) as done:
        cli.main()
    code = done.value.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "fragment"),
                         [pytest.param(argv, fragment, id=name)
                          for name, argv, fragment in CLI_ERROR if fragment is not None])
def test_cli_bad_argument_is_one_line_and_status_2(argv, fragment, tmp_path, monkeypatch,
                                                   capsys):
    code, stderr = _cli(argv, tmp_path, monkeypatch, capsys)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert fragment in lines[0], stderr
    # Checked before anything was computed: no checkpoint was trained, nothing was written.
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "out" / "seeds").exists()


@pytest.mark.parametrize(("argv", "fragment"),
                         [pytest.param(argv, fragment, id=name) for name, argv, fragment in
                          CLI_USAGE])
def test_cli_usage_error_is_status_2_without_traceback(argv, fragment, tmp_path, monkeypatch,
                                                       capsys):
    code, stderr = _cli(argv, tmp_path, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in stderr, stderr
    assert fragment in stderr, stderr
