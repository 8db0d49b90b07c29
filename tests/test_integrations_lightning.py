"""valleys.integrations.lightning.SharpnessCallback: a tiny MLP trained by Lightning on CPU.

The logged numbers are checked against valleys.sharpness and a dense eigendecomposition at the
parameters saved at that step; the trajectory with the callback must be bit-identical to the one
without it."""

import copy
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

import valleys
from valleys.errors import ArgumentTypeError, ArgumentValueError

pl = pytest.importorskip("lightning.pytorch")

from valleys.integrations.lightning import SharpnessCallback  # noqa: E402

MAX_STEPS, EVERY = 12, 4


def _data():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(48, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (48,), generator=gen)
    return X, y


class _Module(pl.LightningModule):
    def __init__(self, optimizer, dict_batches=False):
        super().__init__()
        torch.manual_seed(1)
        # Dropout draws from the global RNG in training: the callback must leave it untouched.
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.2),
                                 nn.Linear(8, 3)).double()
        self.optimizer, self.dict_batches = optimizer, dict_batches
        self.losses = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = (batch["x"], batch["y"]) if self.dict_batches else batch
        # Mean cross-entropy: the loss "ce" of valleys.losses, so the threshold ratio is apt.
        loss = nn.functional.cross_entropy(self(x), y)
        self.losses.append(loss.detach().clone())
        return loss

    def configure_optimizers(self):
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.3, momentum=0.9)
        return torch.optim.Adam(self.parameters(), lr=0.02, betas=(0.9, 0.99))


class _MemoryLogger(pl.loggers.Logger):
    def __init__(self):
        super().__init__()
        self.rows = []

    name, version = "memory", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))


class _Snapshot(pl.Callback):
    """Saves, at the evaluated steps, θ, the modes, the grads and Adam's state (placed before
    the sharpness callback) or checks that they are unchanged (placed after it)."""

    def __init__(self, saved=None):
        self.saved = {} if saved is None else saved
        self.check = saved is not None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % EVERY:
            return
        now = {
            "state": copy.deepcopy(module.state_dict()),
            "modes": [m.training for m in module.modules()],
            "grads": [None if p.grad is None else p.grad.clone() for p in module.parameters()],
            "rng": (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()),  # noqa: NPY002
            "opt": copy.deepcopy(trainer.optimizers[0].state_dict()),
        }
        if not self.check:
            self.saved[step] = now
            return
        before = self.saved[step]
        assert now["modes"] == before["modes"]
        for a, b in zip(now["grads"], before["grads"], strict=True):
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
        assert torch.equal(now["rng"][0], before["rng"][0])
        assert now["rng"][1] == before["rng"][1]
        assert np.array_equal(now["rng"][2], before["rng"][2])


def _fit(module, callbacks, batches):
    pl.seed_everything(3, verbose=False)
    logger = _MemoryLogger()
    trainer = pl.Trainer(max_steps=MAX_STEPS, accelerator="cpu", logger=logger,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=True)
    trainer.fit(module, loader)
    return logger


def _batches(dict_batches=False):
    X, y = _data()
    pairs = [(X[i:i + 8], y[i:i + 8]) for i in range(0, 48, 8)]
    return [{"x": a, "y": b} for a, b in pairs] if dict_batches else pairs


def _dense_hessian(model, X, y):
    """The Hessian of the mean cross-entropy by double backward, independent of valleys."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def risk(t):
        params = dict(zip(names, torch.split(t, [s.numel() for s in shapes]), strict=True))
        params = {n: v.view(s) for (n, v), s in zip(params.items(), shapes, strict=True)}
        out = torch.func.functional_call(model, params, (X,))
        return nn.functional.cross_entropy(out, y)

    return torch.autograd.functional.hessian(risk, theta)


def _check_run(optimizer, loss, data, dict_batches=False):
    batches = _batches(dict_batches)
    plain = _Module(optimizer, dict_batches)
    _fit(plain, [], batches)

    module = _Module(optimizer, dict_batches)
    before = _Snapshot()
    cb = SharpnessCallback(data, loss, every_n_steps=EVERY, k=2, tol=1e-8)
    after = _Snapshot(before.saved)
    logger = _fit(module, [before, cb, after], batches)

    # Bit-identical trajectory: every loss and the final parameters.
    assert torch.equal(torch.stack(plain.losses), torch.stack(module.losses))
    for a, b in zip(plain.parameters(), module.parameters(), strict=True):
        assert torch.equal(a, b)
    rows = [(s, m) for s, m in logger.rows if "valleys/sharpness" in m]
    assert [s for s, _ in rows] == list(range(EVERY, MAX_STEPS + 1, EVERY))
    assert [h["step"] for h in cb.history] == [s for s, _ in rows]

    for step, metrics in rows:
        saved = before.saved[step]
        twin = _Module(optimizer, dict_batches)
        twin.load_state_dict(saved["state"])
        twin.eval()
        if isinstance(loss, str):
            objective = valleys.Objective(twin, loss, data)
        else:
            objective = valleys.Objective.from_function(twin, loss, [data])
        exact = valleys.sharpness(objective, tol=1e-10)
        assert math.isclose(metrics["valleys/sharpness"], exact, rel_tol=1e-6)
        X, y = (data["x"], data["y"]) if isinstance(data, dict) else data
        H = _dense_hessian(twin, X, y)
        top = torch.linalg.eigvalsh(H).flip(0)
        assert math.isclose(metrics["valleys/eig_2"], float(top[1]), rel_tol=1e-6)
        group = saved["opt"]["param_groups"][0]
        if optimizer == "sgd":
            assert "valleys/precond_sharpness" not in metrics
            limit = (2 + 2 * 0.9) / group["lr"]
            on = metrics["valleys/sharpness"]
        else:
            # P = sqrt(v / (1 − β₂^t)) + ε, torch.optim.Adam's denominator, in θ's order.
            b2, eps = group["betas"][1], group["eps"]
            P = torch.cat([
                ((st["exp_avg_sq"] / (1 - b2 ** float(st["step"]))).sqrt() + eps).reshape(-1)
                for _, st in sorted(saved["opt"]["state"].items())])
            D = P.rsqrt()
            pre = torch.linalg.eigvalsh(D[:, None] * H * D[None, :]).flip(0)
            assert math.isclose(metrics["valleys/precond_sharpness"], float(pre[0]),
                                rel_tol=1e-6)
            assert math.isclose(metrics["valleys/precond_eig_2"], float(pre[1]), rel_tol=1e-6)
            limit = (2 + 2 * 0.9) / (group["lr"] * (1 - 0.9))
            on = metrics["valleys/precond_sharpness"]
        assert math.isclose(metrics["valleys/threshold"], limit, rel_tol=1e-12)
        assert math.isclose(metrics["valleys/threshold_ratio"], on / limit, rel_tol=1e-12)
        assert metrics["valleys/hvps"] > 0
        assert 0 < metrics["valleys/overhead_fraction"] < 1
    assert cb.hvps == sum(h["hvps"] for h in cb.history)
    assert 0 < cb.overhead_seconds and 0 < cb.overhead_fraction < 1
    return cb


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_lightning_callback_named_loss(optimizer):
    _check_run(optimizer, "ce", _data())


def _drawing_loss(model, batch):
    # Draws from every global RNG: the callback must restore them all.
    torch.rand(3)
    random.random()
    np.random.rand()  # noqa: NPY002 (the legacy global generator on purpose)
    return nn.functional.cross_entropy(model(batch["x"]), batch["y"], reduction="none")


@pytest.mark.skipif(not hasattr(valleys.Objective, "from_function"),
                    reason="needs valleys.Objective.from_function")
def test_lightning_callback_function_loss():
    X, y = _data()
    _check_run("adam", _drawing_loss, {"x": X[:16], "y": y[:16]}, dict_batches=True)


def test_lightning_callback_bad_arguments():
    data = _data()
    with pytest.raises(ArgumentValueError, match="every_n_steps"):
        SharpnessCallback(data, "ce", every_n_steps=0)
    with pytest.raises(ArgumentTypeError, match="every_n_steps"):
        SharpnessCallback(data, "ce", every_n_steps=2.5)
    with pytest.raises(ArgumentValueError, match="k must"):
        SharpnessCallback(data, "ce", every_n_steps=1, k=0)
    with pytest.raises(ArgumentValueError, match="empty batch"):
        SharpnessCallback((data[0][:0], data[1][:0]), "ce", every_n_steps=1)
    with pytest.raises(ArgumentValueError, match="unknown loss 'hinge'"):
        SharpnessCallback(data, "hinge", every_n_steps=1)
    with pytest.raises(ArgumentTypeError, match=r"\(X, Y\)"):
        SharpnessCallback({"x": data[0]}, "ce", every_n_steps=1)
    with pytest.raises(ArgumentTypeError, match="loss must be"):
        SharpnessCallback(data, 3, every_n_steps=1)


def test_import_valleys_is_lazy():
    import subprocess
    import sys

    code = ("import sys, valleys, valleys.integrations; "
            "print('lightning' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
