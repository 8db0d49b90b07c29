"""Per-block spectra against the diagonal blocks of a dense float64 Hessian (double backward)."""

import pytest
import torch
from _oracles import dense_hessian
from torch import nn

import valleys
from valleys._attention import math_attention
from valleys.blocks import block_spectra, parameter_blocks, plot_block_spectra


class _TinyAttention(nn.Module):
    """Embedding, one self-attention layer with LayerNorm, a head: the shapes of a transformer."""

    def __init__(self, vocab=7, d=8, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, d))
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        h = self.embed(tokens)
        a = self.norm(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.mlp(h)
        return self.head(h.mean(dim=1))


def _attention_objective():
    torch.manual_seed(0)
    model = _TinyAttention().double()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 7, (12, 5), generator=gen)
    labels = torch.randint(0, 3, (12,), generator=gen)
    return valleys.Objective(model, "ce", (tokens, labels))


def _mlp_objective():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(25, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (25,), generator=gen)
    return valleys.Objective(model, "ce", (X, y))


def _dense(obj):
    X, Y = obj.batch(torch.arange(obj.n))
    theta = obj.parameters_vector().detach()
    with math_attention():  # the oracle too needs attention that autograd can differentiate twice
        return dense_hessian(lambda t: obj.chunk_losses(t, X, Y).mean(), theta)


def _index(obj, members):
    offsets, start = {}, 0
    for name, numel in zip(obj.names, obj.numels, strict=True):
        offsets[name] = torch.arange(start, start + numel)
        start += numel
    return torch.cat([offsets[n] for n in members])


@pytest.mark.parametrize("make", [_mlp_objective, _attention_objective])
def test_default_blocks_match_the_dense_diagonal_blocks(make):
    obj = make()
    H = _dense(obj)
    out = valleys.block_spectra(obj, k=3, tol=1e-10)
    assert list(out.columns[:4]) == ["block", "num_params", "top_eigenvalue", "trace"]
    assert sum(out["num_params"]) == obj.dim
    for _, row in out.iterrows():
        assert row["top_eigenvalue"] == row["lambda_1"]
        idx = _index(obj, out.attrs["names"][row["block"]])
        block = H[idx][:, idx]
        exact = torch.linalg.eigvalsh(block).flip(0)
        for j in range(min(3, idx.numel())):
            assert row[f"lambda_{j + 1}"] == pytest.approx(float(exact[j]), rel=1e-7, abs=1e-10)
            assert abs(row[f"lambda_{j + 1}"] - float(exact[j])) <= row[f"error_{j + 1}"] + 1e-12
        assert row["trace"] == pytest.approx(float(torch.trace(block)), rel=1e-10, abs=1e-12)
    # The block traces add up to the trace of the whole Hessian.
    assert out["trace"].sum() == pytest.approx(float(torch.trace(H)), rel=1e-10)


def test_user_blocks_by_glob_module_and_predicate():
    obj = _attention_objective()
    model = obj.model
    layout = parameter_blocks(obj, {
        "attention": ["attn.*"],
        "mlp": model.mlp,
        "embeddings": lambda name: name.startswith("embed."),
        "rest": ["norm.*", "head.*"],
    })
    assert layout["attention"] == [n for n in obj.names if n.startswith("attn.")]
    assert layout["mlp"] == [n for n in obj.names if n.startswith("mlp.")]
    assert layout["embeddings"] == ["embed.weight"]
    H = _dense(obj)
    out = block_spectra(obj, {"attention": "attn.*"}, k=1, tol=1e-10)
    idx = _index(obj, layout["attention"])
    assert out["top_eigenvalue"][0] == pytest.approx(
        float(torch.linalg.eigvalsh(H[idx][:, idx])[-1]), rel=1e-7)


def test_ggn_blocks_and_the_figure():
    obj = _mlp_objective()
    out = block_spectra(obj, curvature="ggn", density=True, k=1)
    assert set(out.attrs["densities"]) == set(out.attrs["names"])
    assert (out["lambda_1"] >= -1e-10).all()  # a GGN block is positive semidefinite
    fig = plot_block_spectra(out)
    assert len(fig.axes) == 3


def test_large_block_uses_hutchplusplus_with_a_standard_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(30, 20, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (30,), generator=gen)
    obj = valleys.Objective(model, "ce", (X, y))
    out = block_spectra(obj, {"first": "0.*"}, trace_matvecs=90, seed=1)
    row = out.iloc[0]
    assert row["num_params"] == 20 * 16 + 16 and row["trace_method"] == "hutch++"
    idx = _index(obj, out.attrs["names"]["first"])
    exact = float(torch.trace(_dense(obj)[idx][:, idx]))
    assert abs(row["trace"] - exact) <= 4 * row["trace_stderr"] + 1e-9


@pytest.mark.parametrize("blocks, error, match", [
    ({"a": "nothing.*"}, ValueError, "matches none"),
    ({"a": lambda name: False}, ValueError, "selects none"),
    ({"a": "0.*", "b": ["0.weight"]}, ValueError, "must not overlap"),
    ({"a": 3}, TypeError, "fnmatch patterns"),
    ({}, TypeError, "non-empty mapping"),
])
def test_bad_blocks_are_refused(blocks, error, match):
    with pytest.raises(error, match=match):
        block_spectra(_mlp_objective(), blocks)


def test_bad_curvature_is_refused():
    with pytest.raises(ValueError, match="curvature"):
        block_spectra(_mlp_objective(), curvature="fisher")


def test_objective_params_by_predicate_or_module_give_the_diagonal_block():
    obj = _attention_objective()
    H = _dense(obj)
    model = obj.model
    idx = _index(obj, [n for n in obj.names if n.startswith("mlp.")])
    block = H[idx][:, idx]
    for params in (model.mlp, lambda name: name.startswith("mlp."), ["mlp.*"]):
        sub = valleys.Objective(model, "ce", obj.batch(torch.arange(obj.n)), params=params)
        assert sub.names == [n for n in obj.names if n.startswith("mlp.")]
        torch.testing.assert_close(valleys.hessian(sub).to_dense(), block, rtol=1e-9, atol=1e-12)


def test_objective_params_refuses_a_foreign_module():
    obj = _mlp_objective()
    with pytest.raises(ValueError, match="holds none"):
        valleys.Objective(obj.model, "ce", obj.batch(torch.arange(4)), params=nn.Linear(2, 2))
