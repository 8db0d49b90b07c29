"""Shared small models and their dense float64 oracles."""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch
from torch import nn
from torch.func import hessian as dense_hessian
from torch.func import jacrev, vmap

matplotlib.use("Agg")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """Small matrices: one thread avoids oversubscription on a shared machine (a module opts in
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class WeightSharing(nn.Module):
    """One Linear layer applied twice (its per-sample gradient is not rank one)."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.inner = nn.Linear(d, d)
        self.head = nn.Linear(d, k)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


class ResidualBlock(nn.Module):
    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)
        self.head = nn.Linear(d, k)

    def forward(self, x):
        return self.head(x + self.b(torch.relu(self.a(x))))


class TinyCNN(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(2 * 2 * 2, k)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x.view(-1, 1, 4, 4))).flatten(1))


def input_dim(kind: str) -> int:
    """Inputs are 4×4 images for the CNN and 5-vectors otherwise (small keeps oracles fast)."""
    return 16 if kind == "cnn" else 5


def make_model(kind: str, k: int = 3) -> nn.Module:
    d = input_dim(kind)
    torch.manual_seed(1)
    models = {
        "mlp-tanh": lambda: nn.Sequential(nn.Linear(d, 6), nn.Tanh(), nn.Linear(6, k)),
        "mlp-relu": lambda: nn.Sequential(nn.Linear(d, 6), nn.ReLU(), nn.Linear(6, k)),
        "cnn": lambda: TinyCNN(k),
        "weight-sharing": lambda: WeightSharing(d, k),
        "residual": lambda: ResidualBlock(d, k),
    }
    return models[kind]().double()


MODEL_KINDS = ["mlp-tanh", "mlp-relu", "cnn", "weight-sharing", "residual"]


def make_data(loss: str, n: int = 13, d: int = 5, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    if loss == "ce":
        Y = torch.randint(0, k, (n,), generator=g)
    else:
        Y = torch.randn(n, k, generator=g, dtype=torch.float64)
    return X, Y


class DenseOracle:
    """Dense float64 curvature matrices of an objective, straight from torch.func."""

    def __init__(self, obj, X, Y) -> None:
        self.obj, self.X, self.Y = obj, X, Y
        self.theta = obj.parameters_vector()

    def hessian(self):
        return dense_hessian(lambda t: self.obj.chunk_losses(t, self.X, self.Y).mean())(self.theta)

    def sample_hessians(self):
        return vmap(dense_hessian(self.obj.sample_loss), in_dims=(None, 0, 0))(
            self.theta, self.X, self.Y
        )

    def sample_gradients(self):
        return vmap(jacrev(self.obj.sample_loss), in_dims=(None, 0, 0))(self.theta, self.X, self.Y)

    def ggn(self):
        def single_output(t, x):
            return self.obj.forward(t, x.unsqueeze(0))[0]

        J = vmap(jacrev(single_output), in_dims=(None, 0))(self.theta, self.X)  # (n, K, p)
        out = self.obj.forward(self.theta, self.X)
        if self.obj.loss_name == "mse":
            lam = torch.eye(out.shape[1], dtype=out.dtype).expand(out.shape[0], -1, -1)
        else:
            p = out.softmax(-1)
            lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        return torch.einsum("nkp,nkl,nlq->pq", J, lam, J) / out.shape[0]


def sym_matrix(eigenvalues, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``Q diag(λ) Qᵀ`` with a random orthogonal ``Q``."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=g, dtype=torch.float64))
    A = (Q * lam) @ Q.T
    return ((A + A.T) / 2).to(dtype)


def interpolating_problem(n: int = 6, d: int = 3, k: int = 2, width: int = 12):
    """Teacher–student: an over-parameterized tanh MLP (p = 74 > nK = 12) fitted exactly.

    Full-batch L-BFGS in float64 drives the loss below 1e-20 in about a second.
    """
    torch.manual_seed(0)
    X = torch.randn(n, d, dtype=torch.float64)
    teacher = nn.Sequential(nn.Linear(d, 4), nn.Tanh(), nn.Linear(4, k)).double()
    with torch.no_grad():
        Y = teacher(X)
    model = nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, k)).double()
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1, max_iter=2000, tolerance_grad=1e-15, tolerance_change=1e-30,
        history_size=50, line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = 0.5 * ((model(X) - Y) ** 2).sum(1).mean()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    import valleys
    from valleys.stability import per_sample_hessians

    obj = valleys.Objective(model, "mse", (X, Y))
    assert obj.loss().item() < 1e-20
    Hs = per_sample_hessians(obj)
    H = Hs.mean(0)
    return obj, {"Hs": Hs, "H": H, "Sigma": (Hs @ Hs).mean(0) - H @ H}
