"""Device-agnostic behaviour: every public entry point runs on the device of its inputs.

Each test builds the same tiny problem on the device under test, runs a public valleys API and
checks (a) that the returned tensors live on that device (with the inputs' dtype), (b) that the
numbers equal a CPU float64 reference computed in the same test, and (c) that seeded random
calls are reproducible on that device. Random streams are never compared across devices (CUDA
and CPU generators differ); only deterministic or statistical quantities are.

Devices: ``cpu``, plus ``cuda`` when available. ``VALLEYS_TEST_DEVICE=cuda`` (or ``cuda:1``,
...) runs on that device only, and *fails* when it is not available, so a misconfigured GPU run
cannot pass silently::

    VALLEYS_TEST_DEVICE=cuda python -m pytest tests/test_device.py
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from torch import nn

import valleys
from valleys import games, landscape, noise, sde, smoothness
from valleys.linalg._lanczos import block_eigsh
from valleys.meanfield import batchnorm as bn
from valleys.meanfield import flows as mf_flows
from valleys.meanfield import resnet as rn
from valleys.meanfield import two_layer
from valleys.stability import gram_sharpness_nonuniformity, stability_analysis
from valleys.train import SharpnessTracker, gradient_flow, train

F64 = torch.float64
CPU = torch.device("cpu")


def _requested_devices() -> list[str]:
    env = os.environ.get("VALLEYS_TEST_DEVICE", "").strip()
    if env:
        return [env]
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


DEVICES = _requested_devices()


@pytest.fixture(params=DEVICES, ids=DEVICES)
def device(request) -> torch.device:
    """The device under test; a requested but unusable device fails (never skips)."""
    name = request.param
    try:
        dev = torch.device(name)
    except RuntimeError as error:
        pytest.fail(f"VALLEYS_TEST_DEVICE={name!r} is not a torch device: {error}", pytrace=False)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            pytest.fail(
                f"device {name!r} requested (VALLEYS_TEST_DEVICE) but torch.cuda.is_available() "
                f"is False: torch {torch.__version__}, built with CUDA {torch.version.cuda}. "
                "Install a CUDA build of torch on a machine with a GPU, or unset "
                "VALLEYS_TEST_DEVICE to test on the CPU.",
                pytrace=False,
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            pytest.fail(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA "
                        "device(s) are visible", pytrace=False)
    else:
        try:
            torch.zeros(1, device=dev)
        except Exception as error:  # any failure: unusable
            pytest.fail(f"device {name!r} is not usable: {error}", pytrace=False)
    return dev


pytestmark = pytest.mark.usefixtures("one_thread")


# -- helpers ------------------------------------------------------------------------------------


def on(t: torch.Tensor, dev: torch.device, dtype: torch.dtype | None = None) -> None:
    """Assert that ``t`` lives on ``dev`` (``cuda`` matches any index) with ``dtype``."""
    assert isinstance(t, torch.Tensor), type(t)
    assert t.device.type == dev.type, f"tensor on {t.device}, expected {dev}"
    if dev.index is not None:
        assert t.device.index == dev.index, f"tensor on {t.device}, expected {dev}"
    if dtype is not None:
        assert t.dtype == dtype, f"dtype {t.dtype}, expected {dtype}"


def close(actual, expected, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    """Compare a device result with a CPU float64 reference (moved to the CPU, as float64)."""
    a = torch.as_tensor(actual).detach().to(CPU, F64)
    b = torch.as_tensor(expected).detach().to(CPU, F64)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def tol_for(dtype: torch.dtype) -> dict[str, float]:
    """Honest tolerances: float64 agrees to round-off; float32 products to ~1e-4 relative."""
    return {"rtol": 1e-9, "atol": 1e-11} if dtype == F64 else {"rtol": 2e-4, "atol": 2e-5}


def make_data(loss: str, n: int = 12, d: int = 5, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    Y = torch.randint(0, k, (n,), generator=g) if loss == "ce" else torch.randn(n, k, generator=g,
                                                                               dtype=F64)
    return X, Y


def make_model(d: int = 5, k: int = 3, width: int = 6) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, k)).double()


def objective(dev: torch.device, dtype: torch.dtype = F64, loss: str = "mse", **kw):
    """The same small objective on ``dev`` in ``dtype`` (labels stay integer for CE)."""
    X, Y = make_data(loss, **{k: v for k, v in kw.items() if k in ("n", "d", "k", "seed")})
    model = make_model(**{k: v for k, v in kw.items() if k in ("d", "k", "width")})
    model = model.to(device=dev, dtype=dtype)
    Y = Y.to(dev) if loss == "ce" else Y.to(dev, dtype)
    return valleys.Objective(model, loss, (X.to(dev, dtype), Y))


# -- objective and operators ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_objective_loss_gradient(device, dtype, loss):
    ref = objective(CPU, F64, loss)
    obj = objective(device, dtype, loss)
    assert obj.device.type == device.type and obj.dtype == dtype
    theta = obj.parameters_vector()
    on(theta, device, dtype)
    value, grad = obj.loss_and_gradient()
    on(value, device, dtype)
    on(grad, device, dtype)
    close(value, ref.loss(), **tol_for(dtype))
    close(grad, ref.gradient(), **tol_for(dtype))
    G = obj.per_sample_gradients()
    on(G, device, dtype)
    close(G, ref.per_sample_gradients(), **tol_for(dtype))
    close(obj.per_sample_losses(), ref.per_sample_losses(), **tol_for(dtype))


# Every registered curvature matrix (a new one is checked on the device without a line here).
OPERATORS = {name: curvature.factory for name, curvature in valleys.operators.CURVATURES.items()}


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(OPERATORS))
def test_operator_products_match_cpu(device, name, dtype):
    make = OPERATORS[name]
    ref_obj, obj = objective(CPU, F64, "ce"), objective(device, dtype, "ce")
    ref_op, op = make(ref_obj), make(obj)
    assert op.shape == ref_op.shape
    g = torch.Generator().manual_seed(0)
    V = torch.randn(obj.dim, 3, generator=g, dtype=F64)
    expected = ref_op.matmat(V)
    scale = float(expected.abs().max())
    tol = tol_for(dtype)
    out = op.matvec(V[:, 0].to(device, dtype))
    on(out, device, dtype)
    close(out, expected[:, 0], rtol=tol["rtol"], atol=tol["rtol"] * scale)
    out = op.matmat(V.to(device, dtype))
    on(out, device, dtype)
    close(out, expected, rtol=tol["rtol"], atol=tol["rtol"] * scale)


VARIANTS = {
    "hessian-double-backward": lambda o: valleys.hessian(o, backend="double-backward"),
    "hessian-forward-over-reverse": lambda o: valleys.hessian(o, backend="forward-over-reverse"),
    "hessian_variance-linear-layers": lambda o: valleys.hessian_variance(o, method="linear-layers"),
    "hessian_variance-vmap": lambda o: valleys.hessian_variance(o, method="vmap"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_operator_code_paths_and_chunking(device, variant):
    """Each implementation path, on a chunked objective (chunks of 5 of the 12 samples)."""
    make = VARIANTS[variant]
    ref = make(objective(CPU, F64, "ce"))
    X, Y = make_data("ce")
    model = make_model().to(device)
    obj = valleys.Objective(model, "ce", (X.to(device), Y.to(device)), chunk_size=5)
    V = torch.randn(obj.dim, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    out = make(obj).matmat(V.to(device))
    on(out, device, F64)
    expected = ref.matmat(V)
    close(out, expected, rtol=1e-9, atol=1e-11 * float(expected.abs().max()))


@pytest.mark.parametrize("method", ["linear-layers", "jacobian"])
def test_gram_methods(device, method):
    ref, obj = objective(CPU, F64), objective(device, F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # not an interpolating minimum
        g_ref = gram_sharpness_nonuniformity(ref, batch_size=3, method=method, tol=1e-10)
        g = gram_sharpness_nonuniformity(obj, batch_size=3, method=method, tol=1e-10)
        G, residuals, _ = valleys.stability.gram_matrix(obj, method=method)
        G_ref, residuals_ref, _ = valleys.stability.gram_matrix(ref, method=method)
    on(G, device, F64)
    on(residuals, device, F64)
    close(G, G_ref, rtol=1e-10, atol=1e-12)
    close(residuals, residuals_ref, rtol=1e-12, atol=1e-14)
    assert g.sharpness == pytest.approx(g_ref.sharpness, rel=1e-8)
    assert g.nonuniformity == pytest.approx(g_ref.nonuniformity, rel=1e-7)


# -- spectra --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_eigsh_block_eigsh_power_iteration(device, dtype):
    ref = valleys.hessian(objective(CPU, F64)).to_dense()
    exact = torch.linalg.eigvalsh(ref).flip(0)
    op = valleys.hessian(objective(device, dtype))
    rel = 1e-8 if dtype == F64 else 2e-3
    tol = 1e-10 if dtype == F64 else 1e-4

    res = valleys.eigsh(op, k=3, tol=tol, seed=0)
    assert res.converged
    on(res.values, device, dtype)
    on(res.vectors, device, dtype)
    close(res.values, exact[:3], rtol=rel, atol=rel * float(exact[0]))
    again = valleys.eigsh(op, k=3, tol=tol, seed=0)
    close(again.values, res.values, rtol=1e-5 if dtype != F64 else 1e-12, atol=0)
    assert again.matvecs == res.matvecs or dtype != F64

    V0 = torch.randn(op.shape[0], 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    blk, basis = block_eigsh(op, V0.to(device, dtype), k=2, tol=tol, seed=0)
    assert blk.converged
    on(blk.values, device, dtype)
    on(basis, device, dtype)
    close(blk.values, exact[:2], rtol=rel, atol=rel * float(exact[0]))

    pw = valleys.power_iteration(op, tol=tol, max_matvecs=3000, seed=0)
    top = float(exact.abs().max())
    on(pw.vectors, device, dtype)
    close(pw.values.abs(), torch.tensor([top]), rtol=1e-6 if dtype == F64 else 5e-3, atol=0)
    close(valleys.power_iteration(op, tol=tol, max_matvecs=3000, seed=0).values, pw.values,
          rtol=1e-12 if dtype == F64 else 1e-5, atol=0)


def test_trace_and_spectral_density(device):
    exact = float(torch.trace(valleys.hessian(objective(CPU, F64)).to_dense()))
    op = valleys.hessian(objective(device, F64))
    for method in ("hutchinson", "hutch++"):
        t1 = valleys.trace(op, method, num_matvecs=30, seed=3)
        t2 = valleys.trace(op, method, num_matvecs=30, seed=3)
        assert math.isfinite(t1.value) and math.isfinite(t1.stderr)
        assert t1.value == pytest.approx(t2.value, rel=1e-12)
        # statistical, not a stream comparison: within 5 standard errors of the exact trace
        assert abs(t1.value - exact) <= 5 * t1.stderr + 1e-8 * abs(exact), (method, t1, exact)
    assert valleys.trace(op, "exact").value == pytest.approx(exact, rel=1e-10)

    sd1 = valleys.spectral_density(op, num_probes=3, lanczos_steps=15, num_points=200, seed=0)
    sd2 = valleys.spectral_density(op, num_probes=3, lanczos_steps=15, num_points=200, seed=0)
    for t in (sd1.grid, sd1.density, sd1.nodes, sd1.weights):
        assert torch.isfinite(t).all()
    close(sd1.density, sd2.density, rtol=1e-10, atol=1e-12)
    close(sd1.nodes, sd2.nodes, rtol=1e-10, atol=1e-12)
    # each probe's Gauss quadrature weights sum to 1 (the probe is a unit vector)
    close(sd1.weights.sum(-1), torch.ones(3), rtol=1e-10, atol=1e-10)


def test_sharpness_and_nonuniformity(device):
    ref, obj = objective(CPU, F64), objective(device, F64)
    s_ref = valleys.sharpness(ref, tol=1e-10)
    s = valleys.sharpness(obj, tol=1e-10)
    assert isinstance(s, float)
    assert s == pytest.approx(s_ref, rel=1e-8)
    assert s == pytest.approx(valleys.sharpness(obj, tol=1e-10), rel=1e-12)
    u_ref = valleys.nonuniformity(ref, tol=1e-10)
    assert valleys.nonuniformity(obj, tol=1e-10) == pytest.approx(u_ref, rel=1e-7)


# -- stability ------------------------------------------------------------------------------------


def test_stability_analysis_and_gram_path(device):
    ref, obj = objective(CPU, F64), objective(device, F64)
    a_ref = stability_analysis(ref, 0.1, 4, tol=1e-10)
    a = stability_analysis(obj, 0.1, 4, tol=1e-10)
    assert a.verdict == a_ref.verdict
    for key in ("lambda_max", "sharpness", "nonuniformity"):
        assert getattr(a, key) == pytest.approx(getattr(a_ref, key), rel=1e-7), key
    # the Gram (NTK) path; this point is not an interpolating minimum (it warns), but the
    # Gram quantities are still defined and must agree across devices
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g_ref = gram_sharpness_nonuniformity(ref, batch_size=4, tol=1e-10)
        g = gram_sharpness_nonuniformity(obj, batch_size=4, tol=1e-10)
    assert g.sharpness == pytest.approx(g_ref.sharpness, rel=1e-8)
    assert g.nonuniformity == pytest.approx(g_ref.nonuniformity, rel=1e-7)
    assert g.max_stable_lr == pytest.approx(g_ref.max_stable_lr, rel=1e-7)


# -- input smoothness -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_input_gradient_norm(device, dtype):
    X, _ = make_data("mse")
    ref = smoothness.input_gradient_norm(make_model(), X, k=2)
    model = make_model().to(device, dtype)
    value = smoothness.input_gradient_norm(model, X.to(device, dtype), k=2)
    assert isinstance(value, float)
    assert value == pytest.approx(ref, rel=1e-10 if dtype == F64 else 1e-4)
    J = smoothness.input_jacobians(model, X.to(device, dtype))
    on(J, device, dtype)


# -- training -------------------------------------------------------------------------------------


def _run(dev, optimizer: str, lr: float, batch_size: int | None):
    obj = objective(dev, F64)
    precond = optimizer == "adam"
    tracker = SharpnessTracker(obj, k=1, every=5, tol=1e-9, warm_block=2,
                               preconditioned=precond, seed=0)
    plain = SharpnessTracker(obj, k=2, every=5, tol=1e-9, prefix="h_", seed=1)
    result = train(obj, optimizer=optimizer, lr=lr, steps=20, record_every=5,
                   batch_size=batch_size, seed=0, callbacks=[tracker, plain])
    return result


@pytest.mark.parametrize("optimizer,lr,batch_size", [("sgd", 0.2, None), ("sgd", 0.2, 5),
                                                     ("adam", 0.01, None)])
def test_train_with_sharpness_tracker_matches_cpu(device, optimizer, lr, batch_size):
    ref = _run(CPU, optimizer, lr, batch_size)
    res = _run(device, optimizer, lr, batch_size)
    on(res.theta, device, F64)
    close(res.theta, ref.theta, rtol=1e-9, atol=1e-11)
    assert res.status == ref.status and len(res.records) == len(ref.records) == 5
    prefix = "precond_" if optimizer == "adam" else ""
    for r, e in zip(res.records, ref.records, strict=True):
        assert r["step"] == e["step"]
        for key in ("loss", "grad_norm", "distance", f"{prefix}sharpness", "h_eig_1", "h_eig_2"):
            if isinstance(e[key], float) and math.isnan(e[key]):  # before Adam's first step
                assert math.isnan(r[key]), key
                continue
            assert r[key] == pytest.approx(e[key], rel=1e-7, abs=1e-12), (key, r["step"])
    again = _run(device, optimizer, lr, batch_size)
    close(again.theta, res.theta, rtol=1e-12, atol=1e-14)


def test_gradient_flow(device):
    # The step is α/|λ|_max from Lanczos, whose start vector comes from the device's generator:
    # with a loose tol the estimate (hence the step, hence θ(t) to integrator accuracy) would
    # legitimately differ across devices. A tight tol makes the steps equal to round-off.
    times = [0.0, 0.5, 1.0]
    ref = gradient_flow(objective(CPU, F64), times, sharpness_every=5, tol=1e-10)
    flow = gradient_flow(objective(device, F64), times, sharpness_every=5, tol=1e-10)
    on(flow.thetas, device, F64)
    close(flow.thetas, ref.thetas, rtol=1e-8, atol=1e-10)
    close(flow.losses, ref.losses, rtol=1e-8, atol=1e-12)
    assert flow.steps == ref.steps and not flow.diverged


# -- landscape ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_loss_on_plane_and_growth_exponent(device, method):
    ref, obj = objective(CPU, F64), objective(device, F64)
    g = torch.Generator().manual_seed(5)
    d1 = torch.randn(obj.dim, generator=g, dtype=F64)
    d2 = torch.randn(obj.dim, generator=g, dtype=F64)
    grid = [-0.5, 0.0, 0.25, 1.0]
    expected = landscape.loss_on_plane(ref, d1, d2, grid, grid, method=method)
    scan = landscape.loss_on_plane(obj, d1.to(device), d2.to(device), grid, grid, method=method,
                                   points_per_chunk=5)
    assert scan.losses.shape == (4, 4)
    assert torch.isfinite(scan.losses).all()
    close(scan.losses, expected.losses, rtol=1e-10, atol=1e-12)
    assert scan.base_loss == pytest.approx(float(ref.loss()), rel=1e-12)
    # along the gradient, away from a critical point, ΔL = t‖g‖² + O(t²): growth exponent 1
    u = ref.gradient()
    ts = [1e-4, 2e-4, 4e-4, 8e-4]
    line = landscape.loss_along_line(obj, u.to(device), ts, method=method)
    line_ref = landscape.loss_along_line(ref, u, ts, method=method)
    # scans are small records (CPU float64 by design); the batched evaluator stays on the device
    assert line.losses.dtype == F64 and scan.losses.dtype == F64
    thetas = obj.parameters_vector() + torch.tensor(ts, dtype=F64, device=device)[:, None] * u.to(
        device)
    batched = landscape.batched_loss(obj, thetas, method=method)
    on(batched, device, F64)
    close(batched, line_ref.losses, rtol=1e-12, atol=1e-14)
    close(line.losses, line_ref.losses, rtol=1e-12, atol=1e-14)
    p = landscape.growth_exponent(ts, line.losses, baseline=float(obj.loss()))
    p_ref = landscape.growth_exponent(ts, line_ref.losses, baseline=float(ref.loss()))
    assert p == pytest.approx(1.0, abs=0.02)
    assert p == pytest.approx(p_ref, rel=1e-6)


# -- noise ------------------------------------------------------------------------------------


def test_minibatch_gradients_and_noise_statistics(device):
    ref, obj = objective(CPU, F64), objective(device, F64)
    idx = noise.batch_indices(obj.n, 4, 6, seed=1)
    assert torch.equal(idx, noise.batch_indices(obj.n, 4, 6, seed=1))
    G = noise.minibatch_gradients(obj, idx)
    on(G, device, F64)
    close(G, noise.minibatch_gradients(ref, idx), rtol=1e-10, atol=1e-12)
    # indices given on the device work too
    close(noise.minibatch_gradients(obj, idx.to(device)), G, rtol=1e-12, atol=1e-14)
    st = noise.noise_statistics(obj, batch_size=4, k=2, hessian=True, seed=0)
    st_ref = noise.noise_statistics(ref, batch_size=4, k=2, hessian=True, seed=0)
    close(st.top_eigenvalues, st_ref.top_eigenvalues, rtol=1e-7, atol=1e-12)
    assert st.trace == pytest.approx(st_ref.trace, rel=1e-9)
    assert st.alignment == pytest.approx(st_ref.alignment, rel=1e-6, abs=1e-9)
    # the Lanczos path (start vectors from the device's generator; 60 matvecs > dim = 57, so
    # the top eigenvalues are resolved to round-off whatever the start)
    lz = noise.noise_statistics(obj, batch_size=4, k=2, method="lanczos", seed=0)
    close(lz.top_eigenvalues, st_ref.top_eigenvalues, rtol=1e-6, atol=1e-12)


def test_stable_samples_and_tail_index(device):
    def draw(seed):
        gen = torch.Generator(device=device).manual_seed(seed)
        return noise.stable_rvs(1.5, 20_000, generator=gen, device=device)

    x = draw(0)
    on(x, device, F64)
    assert torch.equal(x, draw(0)) and not torch.equal(x, draw(1))
    gen = torch.Generator(device=device).manual_seed(0)
    iso = noise.isotropic_stable(1.5, 50, 3, generator=gen, device=device, dtype=torch.float32)
    on(iso, device, torch.float32)
    # statistical check (streams differ across devices): the median of |S| of a symmetric
    # 1.5-stable law, compared with CPU draws; the sample median's relative error is ~1 %
    cpu = noise.stable_rvs(1.5, 20_000, generator=torch.Generator().manual_seed(0))
    assert float(x.abs().median()) == pytest.approx(float(cpu.abs().median()), rel=0.05)

    t1 = noise.tail_index(x, num_bootstrap=20, seed=0)
    t2 = noise.tail_index(x, num_bootstrap=20, seed=0)
    assert t1.alpha == t2.alpha and t1.interval == t2.interval
    assert 1.2 < t1.alpha < 1.8  # the true index is 1.5
    # the estimator is deterministic in the samples: device input = the same samples on CPU
    assert noise.tail_index(x.cpu(), num_bootstrap=20, seed=0).alpha == pytest.approx(
        t1.alpha, rel=1e-12)


def test_sde_simulate(device):
    def run(seed, grad=None, alpha=2.0):
        grad = sde.DoubleWell().grad if grad is None else grad
        return sde.simulate(grad, torch.zeros(3000, 1, dtype=F64, device=device), steps=50,
                            dt=0.02, alpha=alpha, epsilon=0.3,
                            generator=torch.Generator(device=device).manual_seed(seed))

    out = run(0)
    on(out["theta"], device, F64)
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            assert value.device.type == device.type, key
            if value.is_floating_point():
                assert torch.isfinite(value).all(), key
    torch.testing.assert_close(out["theta"], run(0)["theta"], rtol=0, atol=0)
    # without drift and with Gaussian noise θ_T ~ N(0, 2ε²T): the sample variance of 3000
    # paths has a relative standard deviation of sqrt(2/3000) ≈ 2.6 %; allow 4 of them
    brownian = run(1, grad=torch.zeros_like)["theta"]
    assert float(brownian.var()) == pytest.approx(2 * 0.3**2 * 1.0, rel=0.1)
    # heavy-tailed (α = 1.5) increments on the device: reproducible and finite without drift
    levy = run(2, grad=torch.zeros_like, alpha=1.5)["theta"]
    assert torch.isfinite(levy).all() and torch.equal(levy, run(2, torch.zeros_like, 1.5)["theta"])


# -- mean field -----------------------------------------------------------------------------------


def test_two_layer_mean_field(device):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 3, generator=g, dtype=F64)
    y = torch.tanh(X[:, 0] - X[:, 1])
    a_ref, W_ref = two_layer.init_two_layer(8, 3, seed=2)
    a, W = two_layer.init_two_layer(8, 3, seed=2, device=device)
    on(a, device, F64)
    on(W, device, F64)
    close(a, a_ref, rtol=0, atol=0)  # seeded on the CPU: identical on every device
    run_ref = two_layer.train(a_ref, W_ref, X, y, lr=0.5, steps=20, record_every=10)
    run = two_layer.train(a, W, X.to(device), y.to(device), lr=0.5, steps=20, record_every=10)
    on(run.a, device, F64)
    close(run.a, run_ref.a, rtol=1e-10, atol=1e-12)
    close(run.W, run_ref.W, rtol=1e-10, atol=1e-12)
    assert run.status == run_ref.status
    pred = two_layer.predict(run.a, run.W, X.to(device))
    on(pred, device, F64)
    # noisy (Langevin) training is reproducible on the device
    noisy = [two_layer.train(a, W, X.to(device), y.to(device), lr=0.5, steps=5, temperature=1e-3,
                             seed=4) for _ in range(2)]
    close(noisy[0].W, noisy[1].W, rtol=1e-12, atol=1e-14)


def test_particle_flows(device):
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(3), dtype=F64) + 1.0
    field = mf_flows.autograd_field(lambda z, p: p @ (0.75 * z.pow(2).sum(1)))
    ref = mf_flows.simulate(valleys.meanfield.ParticleMeasure(x), field, lr=0.1, steps=5)
    res = mf_flows.simulate(valleys.meanfield.ParticleMeasure(x.to(device)), field, lr=0.1,
                            steps=5)
    on(res.measure.positions, device, F64)
    close(res.measure.positions, ref.measure.positions, rtol=1e-12, atol=1e-14)
    wfr = mf_flows.simulate(valleys.meanfield.ParticleMeasure(x.to(device)), field, lr=0.1,
                            steps=5, method="wfr")
    wfr_ref = mf_flows.simulate(valleys.meanfield.ParticleMeasure(x), field, lr=0.1, steps=5,
                                method="wfr")
    on(wfr.measure.weights, device, F64)
    close(wfr.measure.weights, wfr_ref.measure.weights, rtol=1e-10, atol=1e-13)
    lang = [mf_flows.simulate(valleys.meanfield.ParticleMeasure(x.to(device)), field, lr=0.1,
                              steps=5, method="langevin", temperature=0.1, seed=7)
            for _ in range(2)]
    on(lang[0].measure.positions, device, F64)
    torch.testing.assert_close(lang[0].measure.positions, lang[1].measure.positions, rtol=0,
                               atol=0)


def test_batchnorm_equivalence(device):
    g = torch.Generator().manual_seed(9)
    X = torch.randn(20, 3, generator=g, dtype=F64) + 0.7
    y = torch.tanh(X[:, 0] - X[:, 1])
    a = torch.randn(5, generator=g, dtype=F64)
    W = torch.randn(5, 3, generator=g, dtype=F64)
    ref = bn.compare_bn_riemannian(X, y, a, W, 0.05, 10)
    c = bn.compare_bn_riemannian(X.to(device), y.to(device), a.to(device), W.to(device), 0.05, 10)
    on(c.loss_bn, device, F64)
    on(c.loss_riemannian, device, F64)
    assert not c.diverged and c.max_relative_mismatch < 1e-10
    close(c.loss_bn, ref.loss_bn, rtol=1e-10, atol=1e-13)


def test_resnet_forward_and_adjoint(device):
    g = torch.Generator().manual_seed(0)
    X0 = rn.embed(torch.randn(10, 3, generator=g, dtype=F64), 5)
    Y = torch.randn(10, 2, generator=g, dtype=F64)
    H = torch.randn(5, 2, generator=g, dtype=F64)
    params = rn.ResNetParams.random(4, 3, 5, generator=g)
    params_dev = rn.ResNetParams(*(t.to(device) for t in params.tensors()))
    out = rn.resnet_forward(X0.to(device), params_dev)
    on(out, device, F64)
    close(out, rn.resnet_forward(X0, params), rtol=1e-12, atol=1e-14)
    loss, adj = rn.discrete_adjoint(X0.to(device), Y.to(device), params_dev, H.to(device))
    loss_ref, adj_ref = rn.discrete_adjoint(X0, Y, params, H)
    on(loss, device, F64)
    close(loss, loss_ref, rtol=1e-12, atol=0)
    for t, e in zip(adj.tensors(), adj_ref.tensors(), strict=True):
        on(t, device, F64)
        close(t, e, rtol=1e-10, atol=1e-13)
    # random draws on the device's own generator are reproducible
    dev_params = [rn.ResNetParams.random(2, 3, 5, device=device,
                                         generator=torch.Generator(device=device).manual_seed(1))
                  for _ in range(2)]
    on(dev_params[0].A, device, F64)
    assert torch.equal(dev_params[0].A, dev_params[1].A)


# -- games ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["quasistatic", "descent-ascent"])
def test_games_solve_quadratic(device, method):
    A = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=F64)
    g = torch.Generator().manual_seed(0)
    x0, y0 = torch.randn(16, 2, generator=g, dtype=F64), torch.randn(12, 2, generator=g, dtype=F64)
    kw = dict(steps=10, lr=0.05, seed=0)
    ref = games.solve(games.QuadraticBilinear(A, a=1.0, b=2.0), x0, y0, method, temperature=0.0,
                      **kw)
    game = games.QuadraticBilinear(A.to(device), a=1.0, b=2.0)
    res = games.solve(game, x0.to(device), y0.to(device), method, temperature=0.0, **kw)
    on(res.x, device, F64)
    on(res.y, device, F64)
    close(res.x, ref.x, rtol=1e-10, atol=1e-12)
    close(res.y, ref.y, rtol=1e-10, atol=1e-12)
    noisy = [games.solve(game, x0.to(device), y0.to(device), method, temperature=0.1, **kw)
             for _ in range(2)]
    torch.testing.assert_close(noisy[0].x, noisy[1].x, rtol=0, atol=0)
    # the closed-form helpers of the payoff work on the payoff's device
    cpu_game = games.QuadraticBilinear(A, a=1.0, b=2.0)
    for name in ("quasistatic_mean_matrix", "descent_ascent_mean_matrix"):
        M = getattr(game, name)()
        on(M, device, F64)
        close(M, getattr(cpu_game, name)(), rtol=1e-14, atol=0)
    assert game.quasistatic_mean_rate() == pytest.approx(cpu_game.quasistatic_mean_rate(),
                                                         rel=1e-12)
