"""``HessianOperator(backend="auto")``: the measured choice, its record and its caches.

Both backends are checked against a dense float64 ``torch.func.hessian`` of the risk (a tanh MLP
without normalization layers, where that composition is exact); the choice itself is checked by
replacing the timer with fixed times, so the decision rule is tested without depending on the
load of the machine.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from _oracles import dense_hessian
from torch import nn

import valleys
import valleys.operators._hessian as hessian_module
from valleys.errors import ArgumentValueError
from valleys.operators import BackendChoice, HessianOperator, clear_backend_choices

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
N, D, WIDTH, K = 24, 5, 7, 3


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Every test starts with empty caches, on disk in its own folder."""
    monkeypatch.setenv("VALLEYS_CACHE_DIR", str(tmp_path / "cache"))
    clear_backend_choices()
    yield tmp_path / "cache" / "hvp_backend"
    clear_backend_choices()


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, WIDTH), nn.Tanh(), nn.Linear(WIDTH, K)).to(F64).eval()


def data(n: int = N, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, D, dtype=F64, generator=generator)
    Y = torch.randint(0, K, (n,), generator=generator)
    return X, Y


def objective(seed: int = 0, n: int = N, **kwargs) -> valleys.Objective:
    return valleys.Objective(mlp(seed), "ce", data(n), **kwargs)


def func_hessian(obj: valleys.Objective) -> torch.Tensor:
    """The dense oracle: torch.func.hessian of L(θ) over all the data, in float64."""
    X, Y = data(obj.n)
    theta = obj.parameters_vector()
    return torch.func.hessian(lambda t: obj.chunk_losses(t, X, Y).mean())(theta)


def rel_err(A: torch.Tensor, B: torch.Tensor) -> float:
    return float((A - B).abs().max() / B.abs().max())


class Timer:
    """Stands in for the round-robin timer: fixed times, and a count of the calibrations."""

    def __init__(self, **seconds: float) -> None:
        self.seconds = {k.replace("_", "-"): v for k, v in seconds.items()}
        self.calls = 0

    def __call__(self, calls, device, *, repeats):
        self.calls += 1
        for call in calls.values():  # the real timer runs every call: so does this one
            call()
        return {name: self.seconds[name] for name in calls}


# -- both backends against the oracle ---------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize("backend", ["double-backward", "forward-over-reverse", "auto"])
def test_every_backend_matches_the_dense_float64_oracle(backend, chunk_size):
    obj = objective(chunk_size=chunk_size)
    H = func_hessian(obj)
    assert rel_err(H, H.T) < 1e-14
    op = valleys.hessian(obj, backend=backend)
    assert op.backend in ("double-backward", "forward-over-reverse")
    assert rel_err(op.to_dense(), H) < 1e-10
    V = torch.randn(obj.dim, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert rel_err(op @ V, H @ V) < 1e-10


@pytest.mark.parametrize("seconds", [
    {"gradient": 1.0, "double_backward": 2.0, "forward_over_reverse": 1.0},  # forward clearly
    {"gradient": 1.0, "double_backward": 1.0, "forward_over_reverse": 2.0},  # backward clearly
    {"gradient": 1.0, "double_backward": 1.0, "forward_over_reverse": 0.95},  # a near tie
])
def test_auto_takes_the_faster_backend_and_records_the_ratio(monkeypatch, seconds):
    timer = Timer(**seconds)
    monkeypatch.setattr(hessian_module, "time_round_robin", timer)
    obj = objective()
    op = valleys.hessian(obj)
    choice = op.backend_choice
    forward = seconds["forward_over_reverse"] < hessian_module.FORWARD_MARGIN * seconds[
        "double_backward"]
    assert op.backend == choice.backend == ("forward-over-reverse" if forward
                                             else "double-backward")
    assert choice.source == "measured" and timer.calls == 1
    assert choice.seconds_per_hvp == {"double-backward": seconds["double_backward"],
                                      "forward-over-reverse": seconds["forward_over_reverse"]}
    assert choice.seconds_per_gradient == 1.0
    per_hvp = choice.seconds_per_hvp[choice.backend]
    assert per_hvp is not None
    assert choice.hvp_over_gradient == pytest.approx(per_hvp / 1.0)
    assert choice.failure is None and choice.agreement is not None and choice.agreement < 1e-12
    # Forward-over-reverse never caches; the graph built for the timing is not kept (the first
    # product builds the operator's own).
    assert op.cache is (not forward)
    assert op._cached is None
    # Calibration products are reported, never counted as the operator's products.
    assert choice.products == 2 + 2 * hessian_module.CALIBRATION_REPEATS
    assert choice.gradients == 1 + hessian_module.CALIBRATION_REPEATS
    assert op.num_matvecs == 0
    assert rel_err(op.to_dense(), func_hessian(obj)) < 1e-10
    assert op.num_matvecs == obj.dim


def test_a_real_measurement_is_consistent():
    op = valleys.hessian(objective())
    choice = op.backend_choice
    assert choice.source == "measured" and choice.graph_reused and choice.failure is None
    times = [choice.seconds_per_hvp["double-backward"],
             choice.seconds_per_hvp["forward-over-reverse"], choice.seconds_per_gradient,
             choice.seconds_per_graph]
    assert all(t is not None and 0 < t < math.inf for t in times)
    assert choice.hvp_over_gradient == pytest.approx(
        choice.seconds_per_hvp[op.backend] / choice.seconds_per_gradient)
    assert choice.agreement is not None and choice.agreement < 1e-12
    assert op.num_matvecs == 0


# -- the caches -----------------------------------------------------------------------------
def test_the_choice_is_reused_in_the_process_then_from_disk(monkeypatch, fresh_cache):
    timer = Timer(gradient=1.0, double_backward=2.0, forward_over_reverse=1.0)
    monkeypatch.setattr(hessian_module, "time_round_robin", timer)
    first = valleys.hessian(objective(seed=0)).backend_choice
    assert first.source == "measured" and first.products > 0 and timer.calls == 1
    stored = fresh_cache / f"{first.key}.json"
    assert json.loads(stored.read_text())["backend"] == "forward-over-reverse"
    assert not list(fresh_cache.glob("*.tmp"))  # the atomic write left no temporary file

    # Same architecture, other weights: the same key, no second calibration.
    second = valleys.hessian(objective(seed=5))
    assert second.backend_choice.source == "memory" and timer.calls == 1
    assert second.backend_choice.products == second.backend_choice.gradients == 0
    assert second.backend == "forward-over-reverse"
    assert second.backend_choice.hvp_over_gradient == first.hvp_over_gradient
    assert second.backend_choice.key == first.key

    # A new process (the memory cleared) reads the file.
    clear_backend_choices()
    third = valleys.hessian(objective(seed=7)).backend_choice
    assert third.source == "disk" and timer.calls == 1
    assert third.backend == "forward-over-reverse" and third.products == 0

    # Another chunk shape, or the graph not reused, is another key: measured again.
    assert valleys.hessian(objective(n=N + 1)).backend_choice.source == "measured"
    assert valleys.hessian(objective(), cache=False).backend_choice.source == "measured"
    assert timer.calls == 3
    clear_backend_choices(disk=True)
    assert not list(fresh_cache.glob("*.json"))


def test_a_damaged_cache_file_is_measured_again(monkeypatch, fresh_cache):
    timer = Timer(gradient=1.0, double_backward=1.0, forward_over_reverse=2.0)
    monkeypatch.setattr(hessian_module, "time_round_robin", timer)
    key = valleys.hessian(objective()).backend_choice.key
    (fresh_cache / f"{key}.json").write_text("{ not json")
    clear_backend_choices()
    again = valleys.hessian(objective()).backend_choice
    assert again.source == "measured" and timer.calls == 2
    assert json.loads((fresh_cache / f"{key}.json").read_text())["key"] == key


def test_an_unwritable_cache_folder_only_costs_a_new_measurement(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("VALLEYS_CACHE_DIR", str(blocker / "cache"))
    op = valleys.hessian(objective())
    assert op.backend_choice.source == "measured"
    assert "not saved to disk" in op.backend_choice.reason
    assert rel_err(op.to_dense(), func_hessian(op.objective)) < 1e-10


def test_the_record_round_trips_through_json():
    choice = valleys.hessian(objective()).backend_choice
    again = BackendChoice.from_json(json.loads(json.dumps(choice.to_json())))
    assert again == choice


# -- explicit choices and refusals -------------------------------------------------------------
@pytest.mark.parametrize("backend", ["double-backward", "forward-over-reverse"])
def test_an_explicit_backend_wins_over_a_stored_choice(monkeypatch, backend):
    other = "forward-over-reverse" if backend == "double-backward" else "double-backward"
    seconds = {"gradient": 1.0, "double_backward": 1.0, "forward_over_reverse": 1.0}
    seconds[other.replace("-", "_")] = 0.1
    timer = Timer(**seconds)
    monkeypatch.setattr(hessian_module, "time_round_robin", timer)
    assert valleys.hessian(objective()).backend == other  # the stored choice
    op = valleys.hessian(objective(), backend=backend)
    assert op.backend == backend and timer.calls == 1
    assert op.backend_choice.source == "explicit" and op.backend_choice.products == 0
    assert op.backend_choice.key is None


@pytest.mark.parametrize("backend", ["fast", "Auto", "double_backward", None, 3])
def test_an_unknown_backend_is_refused(backend):
    with pytest.raises(ArgumentValueError, match=r"unknown Hessian backend .*'auto', "
                                                 r"'double-backward', 'forward-over-reverse'"):
        valleys.hessian(objective(), backend=backend)
    with pytest.raises(ValueError):
        HessianOperator(objective(), backend=backend)


# -- forward-over-reverse that cannot be used --------------------------------------------------
class _TanhWithoutForwardMode(torch.autograd.Function):
    """tanh with a (twice differentiable) backward and no forward-mode rule."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return grad_output * (1 - y * y)


class NoForwardMode(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.inner = nn.Linear(D, WIDTH)
        self.head = nn.Linear(WIDTH, K)

    def forward(self, x):
        return self.head(_TanhWithoutForwardMode.apply(self.inner(x)))


def test_a_model_without_forward_mode_rules_falls_back_to_double_backward():
    X, Y = data()
    obj = valleys.Objective(NoForwardMode().to(F64).eval(), "ce", (X, Y))
    with pytest.raises(Exception, match="jvp"):  # forward-over-reverse cannot run here
        valleys.hessian(obj, backend="forward-over-reverse").matvec(
            torch.ones(obj.dim, dtype=F64))
    op = valleys.hessian(obj)
    choice = op.backend_choice
    assert op.backend == choice.backend == "double-backward"
    assert choice.source == "measured" and choice.failure is not None
    assert "raised" in choice.failure and "not usable" in choice.reason
    assert choice.seconds_per_hvp["forward-over-reverse"] is None
    assert choice.seconds_per_hvp["double-backward"] is not None
    assert choice.hvp_over_gradient is not None and choice.hvp_over_gradient > 0
    oracle = dense_hessian(lambda t: obj.chunk_losses(t, X, Y).mean(), obj.parameters_vector())
    assert rel_err(op.to_dense(), oracle) < 1e-10


class _OnceDifferentiableTanh(torch.autograd.Function):
    """tanh whose backward cannot be differentiated: no Hessian by any backend."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return grad_output * (1 - y * y)


def test_a_model_without_second_derivatives_raises_at_the_first_product_not_before():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(D, K)

        def forward(self, x):
            return _OnceDifferentiableTanh.apply(self.inner(x))

    obj = valleys.Objective(Model().to(F64).eval(), "ce", data())
    op = valleys.hessian(obj)  # the calibration's failure is not raised here
    assert op.backend == "double-backward" and op.backend_choice.source == "fixed"
    assert "nothing was measured" in op.backend_choice.reason
    assert op.backend_choice.key is None
    with pytest.raises(RuntimeError, match=r"once_differentiable|differentiate"):
        op.matvec(torch.ones(obj.dim, dtype=F64))


def test_forward_over_reverse_that_disagrees_is_not_chosen(monkeypatch):
    right = hessian_module._forward_over_reverse
    monkeypatch.setattr(hessian_module, "_forward_over_reverse",
                        lambda *args: 1.01 * right(*args))
    monkeypatch.setattr(hessian_module, "time_round_robin",
                        Timer(gradient=1.0, double_backward=2.0, forward_over_reverse=1.0))
    choice = valleys.hessian(objective()).backend_choice
    assert choice.backend == "double-backward"
    assert choice.agreement == pytest.approx(0.01, rel=1e-6)
    assert choice.failure is not None and "beyond rounding" in choice.failure


# -- other objectives ---------------------------------------------------------------------------
def test_a_distributed_objective_is_not_timed(monkeypatch):
    timer = Timer(gradient=1.0, double_backward=2.0, forward_over_reverse=1.0)
    monkeypatch.setattr(hessian_module, "time_round_robin", timer)
    obj = objective()
    monkeypatch.setattr(obj, "distributed", True)  # no process group: only the flag is read
    choice = HessianOperator(obj).backend_choice
    assert choice.backend == "double-backward" and choice.source == "fixed"
    assert timer.calls == 0 and choice.products == 0


def test_a_function_objective_with_dict_batches_is_calibrated():
    X, Y = data()
    batches = [{"x": X[:12], "y": Y[:12]}, {"x": X[12:], "y": Y[12:]}]
    model = mlp()

    def fn(m, batch):
        return nn.functional.cross_entropy(m(batch["x"]), batch["y"], reduction="none")

    obj = valleys.Objective.from_function(model, fn, batches)
    op = valleys.hessian(obj)
    assert op.backend_choice.source == "measured"
    assert op.backend_choice.signature["chunk"][0] == {"x": [[12, D], "torch.float64"],
                                                       "y": [[12], "torch.int64"]}
    oracle = dense_hessian(lambda t: _risk(obj, model, X, Y, t), obj.parameters_vector())
    assert rel_err(op.to_dense(), oracle) < 1e-10


def _risk(obj, model, X, Y, theta):
    out = torch.func.functional_call(model, obj.unflatten(theta), (X,))
    return nn.functional.cross_entropy(out, Y)


def test_calibration_leaves_the_global_random_stream_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, WIDTH), nn.Dropout(0.5), nn.Linear(WIDTH, K)).to(F64)
    obj = valleys.Objective(model.train(), "ce", data(), allow_train_mode=True)
    state = torch.get_rng_state()
    op = valleys.hessian(obj)
    assert op.backend_choice.source == "measured"
    assert torch.equal(torch.get_rng_state(), state)
