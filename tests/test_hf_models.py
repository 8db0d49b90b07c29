"""Hugging Face models (built from configs, nothing downloaded) through Objective.from_function:
Hessian-vector products against double backward of a hand-written risk."""

import pytest
import torch

import valleys
from valleys._attention import math_attention

transformers = pytest.importorskip("transformers")


def _oracle_hvp(model, fn, batches, theta, v):
    """H v by double backward of L(θ) = mean of fn's losses, with θ put in by functional_call."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def risk(t):
        params, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = t[start:start + shape.numel()].reshape(shape)
            start += shape.numel()

        class _Bound(torch.nn.Module):
            def forward(self, **kwargs):
                return torch.func.functional_call(model, params, (), kwargs)

        bound = _Bound()
        return torch.cat([fn(bound, b) for b in batches]).mean()

    leaf = theta.clone().requires_grad_(True)
    with math_attention():
        g = torch.autograd.grad(risk(leaf), leaf, create_graph=True)[0]
        return torch.autograd.grad(g @ v, leaf)[0]


def _gpt2_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1),
        reduction="none")
    return losses[batch["attention_mask"][:, 1:].reshape(-1).bool()]


def _bert_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")


def _batches(vocab, labels=False):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (4, 8), generator=gen)
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[1, 6:] = 0
    batches = [{"input_ids": ids[:2], "attention_mask": mask[:2]},
               {"input_ids": ids[2:], "attention_mask": mask[2:]}]
    if labels:
        for b in batches:
            b["labels"] = torch.randint(0, 3, (2,), generator=gen)
    return batches


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_hf_model_hessian_products_match_double_backward(arch):
    torch.manual_seed(0)
    if arch == "gpt2":
        config = transformers.GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1,
                                         n_head=2)
        model, fn, batches = transformers.GPT2LMHeadModel(config), _gpt2_loss, _batches(16)
    else:
        config = transformers.BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=16,
                                         max_position_embeddings=8, num_labels=3)
        model = transformers.BertForSequenceClassification(config)
        fn, batches = _bert_loss, _batches(16, labels=True)
    model = model.double().eval()  # dropout off: the user's call, as valleys asks
    obj = valleys.Objective.from_function(model, fn, batches)
    theta = obj.parameters_vector()
    op = valleys.hessian(obj)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        v = torch.randn(obj.dim, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(op @ v, _oracle_hvp(model, fn, batches, theta, v),
                                   rtol=1e-8, atol=1e-10)
    assert valleys.sharpness(obj, tol=1e-6) > 0


def test_hf_model_in_train_mode_is_refused():
    config = transformers.GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config).double().train()
    with pytest.raises(ValueError, match="eval"):
        valleys.Objective.from_function(model, _gpt2_loss, _batches(16))
