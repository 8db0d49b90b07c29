"""Objective.from_function: any batch, any per-sample loss, checked against dense oracles."""

import pytest
import torch
from _oracles import dense_hessian
from torch import nn

import valleys
from valleys._attention import math_attention


class _TinyLM(nn.Module):
    """Embeddings, one causal attention block with LayerNorm, a tied output layer."""

    def __init__(self, vocab=11, d=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(6, d) * 0.1)
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)

    def forward(self, ids):
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        a = self.norm(h)
        mask = torch.triu(torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool), 1)
        h = h + self.attn(a, a, a, attn_mask=mask, need_weights=False)[0]
        return h @ self.embed.weight.T  # weight tying


def _lm_loss(model, batch):
    """Next-token cross-entropy per non-padding token (a 1-D tensor)."""
    logits = model(batch["input_ids"])[:, :-1]
    targets = batch["input_ids"][:, 1:]
    keep = batch["attention_mask"][:, 1:].bool()
    losses = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                         targets.reshape(-1), reduction="none")
    return losses[keep.reshape(-1)]


def _lm_batches():
    gen = torch.Generator().manual_seed(0)
    batches = []
    for rows in (3, 2):
        ids = torch.randint(0, 11, (rows, 6), generator=gen)
        mask = torch.ones(rows, 6, dtype=torch.long)
        mask[0, 4:] = 0  # padding at the end of the first sequence
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def _lm_objective():
    torch.manual_seed(0)
    model = _TinyLM().double()
    return valleys.Objective.from_function(model, _lm_loss, _lm_batches()), model


def _reference_risk(model, batches, fn):
    """L(θ) written out by hand: mean of all per-token losses over all batches."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def risk(theta):
        params, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = shape.numel()
            params[name] = theta[start:start + size].reshape(shape)
            start += size
        losses = [fn(lambda *a: torch.func.functional_call(model, params, a), b) for b in batches]
        return torch.cat(losses).mean()
    return risk


def test_language_model_loss_gradient_and_hessian_match_the_oracle():
    obj, model = _lm_objective()
    theta = obj.parameters_vector()
    assert obj.n == sum(int(b["attention_mask"][:, 1:].sum()) for b in _lm_batches())
    risk = _reference_risk(model, _lm_batches(), _lm_loss)
    with math_attention():
        assert float(obj.loss()) == pytest.approx(float(risk(theta)), rel=1e-12)
        leaf = theta.clone().requires_grad_(True)
        g = torch.autograd.grad(risk(leaf), leaf)[0]
        H = dense_hessian(risk, theta)
    torch.testing.assert_close(obj.gradient(), g, rtol=1e-10, atol=1e-12)
    op = valleys.hessian(obj)
    torch.testing.assert_close(op.to_dense(), H, rtol=1e-8, atol=1e-10)
    top = float(torch.linalg.eigvalsh(H)[-1])
    assert valleys.sharpness(obj, tol=1e-8) == pytest.approx(top, rel=1e-6)


def test_gradient_covariance_from_per_token_gradients():
    obj, _ = _lm_objective()
    theta = obj.parameters_vector()
    G = obj.per_sample_gradients()
    assert G.shape == (obj.n, obj.dim)
    torch.testing.assert_close(G.mean(0), obj.gradient(), rtol=1e-10, atol=1e-12)
    v = torch.randn(obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    C = G.T @ G / obj.n - torch.outer(G.mean(0), G.mean(0))
    torch.testing.assert_close(valleys.gradient_covariance(obj, theta) @ v, C @ v,
                               rtol=1e-9, atol=1e-11)


class _PoissonNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


def _poisson_residual(model, batch):
    """Per-point squared residual of u'' = f (the PDE term of a physics-informed loss)."""
    x = batch["x"].clone().requires_grad_(True)
    u = model(x)
    du = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
    d2u = torch.autograd.grad(du.sum(), x, create_graph=True)[0]
    return ((d2u - batch["f"]) ** 2).reshape(-1)


def test_hessian_through_input_derivatives_matches_the_oracle():
    torch.manual_seed(0)
    model = _PoissonNet().double()
    x = torch.linspace(0, 1, 12, dtype=torch.float64).reshape(-1, 1)
    batches = [{"x": x[:7], "f": -torch.sin(x[:7])}, {"x": x[7:], "f": -torch.sin(x[7:])}]
    obj = valleys.Objective.from_function(model, _poisson_residual, batches)
    risk = _reference_risk(model, batches, _poisson_residual)
    theta = obj.parameters_vector()
    H = dense_hessian(risk, theta)
    assert float(H.abs().max()) > 0
    for backend in ("double-backward", "auto"):
        torch.testing.assert_close(valleys.hessian(obj, backend=backend).to_dense(), H,
                                   rtol=1e-8, atol=1e-10)


def test_what_needs_outputs_or_indexable_samples_is_refused():
    obj, _ = _lm_objective()
    for call in (lambda: valleys.ggn(obj) @ torch.zeros(obj.dim, dtype=torch.float64),
                 lambda: obj.accuracy(),
                 lambda: obj.batch(torch.arange(2))):
        with pytest.raises(ValueError, match="from_function"):
            call()


def test_changed_data_on_a_later_pass_is_refused():
    torch.manual_seed(0)
    batches = _lm_batches()
    obj = valleys.Objective.from_function(_TinyLM().double(), _lm_loss, batches)
    batches[1]["input_ids"][0, 0] = (batches[1]["input_ids"][0, 0] + 1) % 11
    with pytest.raises(ValueError, match="differs from the first pass"):
        obj.loss()


@pytest.mark.parametrize("fn, data, error, match", [
    (_lm_loss, iter(_lm_batches()), TypeError, "one-shot iterator"),
    ("ce", _lm_batches(), TypeError, "fn must be a function"),
    (_lm_loss, _lm_batches()[0], TypeError, "wrap a single batch"),
    (lambda m, b: _lm_loss(m, b).reshape(1, -1), _lm_batches(), ValueError, "1-D tensor"),
    (lambda m, b: _lm_loss(m, b) * float("nan"), _lm_batches(), ValueError, "non-finite"),
    (lambda m, b: _lm_loss(m, b)[:0], _lm_batches(), ValueError, "no losses"),
])
def test_bad_arguments_are_refused(fn, data, error, match):
    with pytest.raises(error, match=match):
        valleys.Objective.from_function(_TinyLM().double(), fn, data)


def test_dropout_is_refused_in_train_mode():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).double()
    with pytest.raises(ValueError, match="eval"):
        valleys.Objective.from_function(model, lambda m, b: m(b).sum(1),
                                        [torch.randn(4, 2, dtype=torch.float64)])


def _gpt_batches(vocab=16):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (3, 8), generator=gen)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return [{"input_ids": ids[:2], "attention_mask": mask[:2]},
            {"input_ids": ids[2:], "attention_mask": mask[2:]}]


def test_tiny_gpt_hessian_matches_the_oracle_and_padding_is_ignored():
    from valleys.losses import next_token_losses
    from valleys.models import TinyGPT

    model = TinyGPT(16, d_model=8, n_layer=2, n_head=2, max_len=8, seed=0).double()
    assert model.head.weight is model.wte.weight
    batches = _gpt_batches()
    with pytest.warns(UserWarning, match="math backend"):
        obj = valleys.Objective.from_function(model, next_token_losses, batches)
    assert obj.n == sum(int(b["attention_mask"][:, 1:].sum()) for b in batches)
    risk = _reference_risk(model, batches, next_token_losses)
    theta = obj.parameters_vector()
    with math_attention():
        H = dense_hessian(risk, theta)
    op = valleys.hessian(obj)
    v = torch.randn(obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op @ v, H @ v, rtol=1e-8, atol=1e-10)
    assert valleys.sharpness(obj, tol=1e-8) == pytest.approx(
        float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6)
    # Padded tokens change nothing: replace them and the losses stay the same.
    changed = [{k: v.clone() for k, v in b.items()} for b in batches]
    for b in changed:
        b["input_ids"][b["attention_mask"] == 0] = 0
    torch.testing.assert_close(
        torch.cat([next_token_losses(model, b) for b in changed]),
        torch.cat([next_token_losses(model, b) for b in batches]), rtol=1e-12, atol=1e-12)


def test_full_batch_training_of_a_function_objective_is_gradient_descent():
    obj, _ = _lm_objective()
    theta0 = obj.parameters_vector()
    result = valleys.train.train(obj, optimizer="sgd", lr=0.5, steps=3, momentum=0.0,
                                 record_every=1)
    theta = theta0
    for _ in range(3):
        theta = theta - 0.5 * obj.gradient(theta)
    torch.testing.assert_close(result.theta, theta, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="from_function"):
        valleys.train.train(obj, batch_size=2, steps=1)
