"""valleys.integrations.huggingface.SharpnessCallback: a tiny GPT-2, built from a config (nothing
downloaded), trained by transformers.Trainer on CPU.

The logged numbers are checked against valleys.sharpness and a cold Lanczos solve of the
preconditioned Hessian at the parameters and Adam state saved at that step; the trajectory with
the callback must be bit-identical to the one without it."""

import copy
import math
import random

import numpy as np
import pytest
import torch

import valleys
from valleys.errors import ArgumentTypeError, ArgumentValueError
from valleys.operators import hessian
from valleys.train import PreconditionedOperator

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from valleys.integrations.huggingface import SharpnessCallback  # noqa: E402

MAX_STEPS = 6
LR, BETA1 = 2e-3, 0.9
needs_from_function = pytest.mark.skipif(
    not hasattr(valleys.Objective, "from_function"),
    reason="needs valleys.Objective.from_function")


def _model():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                     n_positions=16, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).double()  # in train mode: dropout 0.1 active


def _tokens():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (24, 8), generator=gen)
    mask = torch.ones(24, 8, dtype=torch.long)
    train = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": ids[i]}
             for i in range(16)]
    labels = ids[16:18].clone()
    labels[1, 6:] = -100  # two padding positions, ignored as transformers does
    evaluation = {"input_ids": ids[16:18], "attention_mask": mask[16:18], "labels": labels}
    return train, evaluation


def _next_token_losses(model, batch):
    """Next-token cross-entropy written out here, independently of the integration."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:].reshape(-1)
    keep = targets != -100
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1])[keep], targets[keep], reduction="none")
    return losses


def _drawing_losses(model, batch):
    # Draws from every global RNG: the callback must restore them all.
    torch.rand(2)
    random.random()
    np.random.rand()  # noqa: NPY002 (the legacy global generator on purpose)
    return _next_token_losses(model, batch)


class _Snapshot(transformers.TrainerCallback):
    """At evaluated steps: saves θ, modes, grads, RNG and Adam's P (before the callback) or
    checks they are unchanged (after it)."""

    def __init__(self, every, saved=None):
        self.every, self.check = every, saved is not None
        self.saved = {} if saved is None else saved

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        if step % self.every:
            return
        inner = optimizer.optimizer
        P = {}
        for name, p in model.named_parameters():
            st, group = inner.state[p], next(g for g in inner.param_groups
                                             if any(q is p for q in g["params"]))
            # torch.optim.AdamW's denominator sqrt(v / (1 − β₂^t)) + ε.
            P[name] = ((st["exp_avg_sq"] / (1 - group["betas"][1] ** float(st["step"]))).sqrt()
                       + group["eps"]).reshape(-1).clone()
        now = {"state": copy.deepcopy(model.state_dict()), "P": P,
               "modes": [m.training for m in model.modules()],
               "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
               "rng": (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()),  # noqa: NPY002
               "lr": inner.param_groups[0]["lr"]}
        if not self.check:
            self.saved[step] = now
            return
        before = self.saved[step]
        assert now["modes"] == before["modes"] and any(now["modes"])
        for a, b in zip(now["grads"], before["grads"], strict=True):
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
        assert torch.equal(now["rng"][0], before["rng"][0])
        assert now["rng"][1] == before["rng"][1]
        assert np.array_equal(now["rng"][2], before["rng"][2])


def _train(tmp_path, callbacks, attach=None):
    train, _ = _tokens()
    model = _model()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=MAX_STEPS, per_device_train_batch_size=4,
        learning_rate=LR, adam_beta1=BETA1, lr_scheduler_type="constant", report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=1000, disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train,
                                   callbacks=callbacks)
    if attach is not None:
        attach.set_trainer(trainer)
    trainer.train()
    return model, trainer


@needs_from_function
def test_hf_callback_gpt2(tmp_path):
    _, evaluation = _tokens()
    plain, _ = _train(tmp_path / "plain", [])
    before = _Snapshot(3)
    # Two callbacks in one run: a loss name logging through trainer.log, and a function that
    # draws from every global RNG logging to state.log_history; neither may change training.
    cb = SharpnessCallback(evaluation, "causal_lm", every_n_steps=3, k=1, tol=1e-5)
    fn_cb = SharpnessCallback(evaluation, _drawing_losses, every_n_steps=MAX_STEPS, k=2,
                              prefix="fn/")
    model, trainer = _train(tmp_path / "cb", [before, cb, fn_cb, _Snapshot(3, before.saved)],
                            attach=cb)
    for a, b in zip(plain.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)  # bit-identical trajectory

    rows = [r for r in trainer.state.log_history if "valleys/sharpness" in r]
    assert [r["step"] for r in rows] == [3, 6]
    assert all("epoch" in r for r in rows)  # trainer.log adds the epoch
    limit = (2 + 2 * BETA1) / (LR * (1 - BETA1))
    for row in rows:
        assert math.isclose(row["valleys/threshold"], limit, rel_tol=1e-12)
        assert math.isclose(row["valleys/threshold_ratio"],
                            row["valleys/precond_sharpness"] / limit, rel_tol=1e-12)
        assert row["valleys/hvps"] > 0 and 0 < row["valleys/overhead_fraction"] < 1
    assert cb.hvps == sum(h["hvps"] for h in cb.history)
    assert cb.overhead_seconds > 0 and 0 < cb.overhead_fraction < 1

    row = rows[-1]
    twin = _model()
    twin.load_state_dict(before.saved[row["step"]]["state"])
    twin.eval()
    objective = valleys.Objective.from_function(twin, _next_token_losses, [evaluation])
    exact = valleys.sharpness(objective, tol=1e-5)
    assert math.isclose(row["valleys/sharpness"], exact, rel_tol=1e-6)
    P = torch.cat([before.saved[row["step"]]["P"][name] for name in objective.names])
    op = PreconditionedOperator(hessian(objective, objective.parameters_vector()), P)
    pre = valleys.eigsh(op, k=1, which="largest", tol=1e-5)
    assert math.isclose(row["valleys/precond_sharpness"], float(pre.values[0]), rel_tol=1e-6)

    fn_rows = [r for r in trainer.state.log_history if "fn/sharpness" in r]
    assert [r["step"] for r in fn_rows] == [MAX_STEPS] and "epoch" not in fn_rows[0]
    assert fn_rows[0]["fn/eig_2"] <= fn_rows[0]["fn/eig_1"]
    # The same loss, written twice: the two callbacks agree to their tolerances.
    assert math.isclose(fn_rows[0]["fn/sharpness"], row["valleys/sharpness"], rel_tol=1e-3)


def _bert(cls):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=32,
                                      max_position_embeddings=16, num_labels=3)
    return cls(config).double().eval()


def test_hf_loss_names_reproduce_the_models_losses():
    from valleys.integrations.huggingface import (
        causal_lm_losses,
        classification_losses,
        token_losses,
    )

    def close(ours, theirs):
        # transformers computes its LM losses from float32 logits, even for float64 models.
        return math.isclose(float(ours.mean()), float(theirs), rel_tol=1e-6)

    _, batch = _tokens()
    gpt2 = _model().eval()
    assert close(causal_lm_losses(gpt2, batch), gpt2(**batch).loss)
    masked = {**batch, "labels": batch["labels"].masked_fill(torch.arange(8) % 3 != 0, -100)}
    bert = _bert(transformers.BertForMaskedLM)
    assert close(token_losses(bert, masked), bert(**masked).loss)
    labelled = {**batch, "labels": torch.tensor([0, 2])}
    bert = _bert(transformers.BertForSequenceClassification)
    assert close(classification_losses(bert, labelled), bert(**labelled).loss)


@needs_from_function
def test_hf_callback_bert_classification_with_sgd():
    """on_step_end called by hand (no Trainer): SGD's 2/η threshold, a tiny BERT in train mode
    with gradients present, both restored exactly."""
    from types import SimpleNamespace

    _, batch = _tokens()
    batch = {**batch, "labels": torch.tensor([0, 2])}
    model = _bert(transformers.BertForSequenceClassification).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(**batch).loss.backward()
    optimizer.step()
    grads = [p.grad for p in model.parameters()]
    values = [None if g is None else g.clone() for g in grads]
    theta = [p.detach().clone() for p in model.parameters()]
    cb = SharpnessCallback(batch, "ce", every_n_steps=1, k=1, tol=1e-5)
    state = SimpleNamespace(global_step=1, is_world_process_zero=True, log_history=[])
    cb.on_train_begin(None, state, None)
    cb.on_step_end(None, state, None, model=model, optimizer=optimizer)
    cb.on_step_end(None, state, None, model=model, optimizer=optimizer)  # step 1 done already
    assert all(m.training for m in model.modules())
    for p, g, v, t in zip(model.parameters(), grads, values, theta, strict=True):
        assert p.grad is g and (g is None or torch.equal(g, v)) and torch.equal(p, t)
    (row,) = state.log_history
    assert row["step"] == 1 and "valleys/precond_sharpness" not in row

    def losses(m, b):
        logits = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        return torch.nn.functional.cross_entropy(logits, b["labels"], reduction="none")

    model.eval()
    exact = valleys.sharpness(valleys.Objective.from_function(model, losses, [batch]), tol=1e-5)
    assert math.isclose(row["valleys/sharpness"], exact, rel_tol=1e-6)
    assert math.isclose(row["valleys/threshold"], 2 / 0.1, rel_tol=1e-12)
    assert math.isclose(row["valleys/threshold_ratio"], exact / 20, rel_tol=1e-6)


def test_hf_callback_bad_arguments():
    _, batch = _tokens()
    with pytest.raises(ArgumentValueError, match="every_n_steps"):
        SharpnessCallback(batch, "causal_lm", every_n_steps=0)
    with pytest.raises(ArgumentValueError, match="k must"):
        SharpnessCallback(batch, "causal_lm", every_n_steps=1, k=-1)
    with pytest.raises(ArgumentTypeError, match="k must"):
        SharpnessCallback(batch, "causal_lm", every_n_steps=1, k="2")
    with pytest.raises(ArgumentValueError, match="empty batch"):
        SharpnessCallback({"input_ids": torch.zeros(0, 8, dtype=torch.long)}, "causal_lm",
                          every_n_steps=1)
    with pytest.raises(ArgumentValueError, match="unknown loss 'lm'"):
        SharpnessCallback(batch, "lm", every_n_steps=1)
    with pytest.raises(ArgumentValueError, match="labels"):
        SharpnessCallback({"input_ids": batch["input_ids"]}, "masked_lm", every_n_steps=1)
    with pytest.raises(ArgumentTypeError, match="mapping"):
        SharpnessCallback((batch["input_ids"],), "causal_lm", every_n_steps=1)
    with pytest.raises(ArgumentTypeError, match="set_trainer"):
        SharpnessCallback(batch, "causal_lm", every_n_steps=1).set_trainer(object())
