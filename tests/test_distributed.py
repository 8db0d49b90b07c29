"""A sharded Objective over 2 and 3 gloo processes gives the single-process answers.

Each job spawns its processes once and runs every check in them (process start-up dominates);
the parent computes the same quantities on one process and compares to 1e-6 relative (float64).
Shards are uneven and one rank's shard is split into several chunks, so both the cached and the
re-evaluated paths of the operators meet the all-reduce.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import valleys
from valleys import distributed as vdist
from valleys.stability import stability_analysis
from valleys.train.loop import train

N, D, K = 23, 5, 3
LR, B, SGD_STEPS, GD_STEPS = 0.2, 6, 4, 5
RTOL = 1e-6


def _problem():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, D, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, K, (N,), generator=gen)
    Y = nn.functional.one_hot(labels, K).to(torch.float64)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, K))
    return model.to(torch.float64), X, Y


def _quantities(obj) -> dict:
    """Everything compared between one process and the shards (the same calls on every rank)."""
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(obj.dim, generator=gen, dtype=torch.float64)
    V = torch.randn(obj.dim, 3, generator=gen, dtype=torch.float64)
    H = valleys.hessian(obj)
    out = {
        "n": torch.tensor(float(obj.n)),
        "loss": obj.loss(),
        "gradient": obj.gradient(),
        "accuracy": torch.tensor(obj.accuracy()),
        "hvp": H.matvec(v),
        "hmm": H.matmat(V),
        "hvp_forward": valleys.hessian(obj, backend="forward-over-reverse").matvec(v),
        "ggn": valleys.ggn(obj).matvec(v),
        "fisher": valleys.empirical_fisher(obj).matmat(V),
        "gradient_covariance": valleys.gradient_covariance(obj).matvec(v),
        "variance_linear": valleys.hessian_variance(obj, method="linear-layers").matmat(V),
        "variance_vmap": valleys.hessian_variance(obj, method="vmap").matvec(v),
        "ggn_variance": valleys.ggn_variance(obj).matvec(v),
        "eigenvalues": valleys.eigsh(H, k=3, tol=1e-10, seed=0).values,
        "trace_exact": torch.tensor(valleys.trace(H, method="exact").value),
        "trace_hutchpp": torch.tensor(valleys.trace(H, num_matvecs=30, seed=3).value),
        "density": valleys.spectral_density(H, num_probes=2, lanczos_steps=15, seed=1).density,
        "sharpness": torch.tensor(valleys.sharpness(obj, tol=1e-10)),
        "nonuniformity": torch.tensor(valleys.nonuniformity(obj, tol=1e-10)),
        "stability": torch.tensor(
            stability_analysis(obj, LR, B, tol=1e-10, components=False).lambda_max
        ),
    }
    batches = valleys.noise.batch_indices(obj.n, B, 5, seed=4)
    out["minibatch_gradients"] = valleys.noise.minibatch_gradients(obj, batches)
    stats = valleys.noise.noise_statistics(obj, batch_size=B, k=2, method="lanczos", seed=0)
    out["noise_top"] = stats.top_eigenvalues
    out["noise_trace"] = torch.tensor(stats.trace)
    out["adam_v"] = valleys.noise.stationary_second_moment(obj, batch_size=B)
    gd = train(obj, lr=LR, steps=GD_STEPS, record_every=1)
    out["gd_losses"] = torch.tensor([r["loss"] for r in gd.records])
    out["gd_theta"] = gd.theta
    out["sgd_theta"] = _sgd(obj)
    sgd = train(obj, lr=LR, steps=SGD_STEPS, batch_size=B, record_every=1, seed=2)
    out["sgd_train_theta"] = sgd.theta
    return out


def _sgd(obj) -> torch.Tensor:
    """Mini-batch SGD as train() draws it ("subset": randperm(n)[:B] from a seeded generator)."""
    param = torch.nn.Parameter(obj.parameters_vector())
    optimizer = torch.optim.SGD([param], lr=LR)
    gen = torch.Generator().manual_seed(0)
    for _ in range(SGD_STEPS):
        indices = torch.randperm(obj.n, generator=gen)[:B]
        param.grad = obj.batch_loss_and_gradient(param.detach(), indices)[1]
        optimizer.step()
    return param.detach().clone()


def _expect_error(fn, kind) -> str:
    try:
        fn()
    except kind as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def _worker(rank, world, port, folder, sizes, chunk_sizes, errors):
    torch.set_num_threads(1)
    result: dict = {}
    try:
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
            timeout=timedelta(seconds=20),
        )
        model, X, Y = _problem()
        stop = list(torch.tensor(sizes).cumsum(0))
        start = [0, *stop[:-1]]
        shard = (X[start[rank] : stop[rank]], Y[start[rank] : stop[rank]])
        obj = valleys.Objective(model, "mse", shard, chunk_size=chunk_sizes[rank],
                                distributed=True)
        result = _quantities(obj)
        result["shard_sizes"] = torch.tensor(obj.shard_sizes)
        # DistributedDataParallel is unwrapped; its construction broadcasts rank 0's weights.
        ddp = nn.parallel.DistributedDataParallel(model)
        result["ddp_loss"] = valleys.Objective(ddp, "mse", shard, distributed=True).loss()
        if errors:
            _error_checks(rank, model, shard, result)
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
        if errors and rank == 1:
            raise RuntimeError("rank 1 fails on purpose")
        if errors:
            started = time.perf_counter()
            result["dead_peer"] = _expect_error(obj.loss, vdist.CollectiveError)
            result["dead_peer_seconds"] = time.perf_counter() - started
            torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
    except Exception:
        result["crash"] = traceback.format_exc()
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
        raise


def _error_checks(rank, model, shard, result):
    X, Y = shard
    empty = (X[:0], Y[:0]) if rank == 1 else shard
    result["empty_shard"] = _expect_error(
        lambda: valleys.Objective(model, "mse", empty, distributed=True), ValueError
    )
    bad = (X.float(), Y) if rank == 1 else shard
    result["bad_rank"] = _expect_error(
        lambda: valleys.Objective(model, "mse", bad, distributed=True), (TypeError, RuntimeError)
    )
    obj = valleys.Objective(model, "mse", shard, distributed=True)
    # Unseeded solvers would feed each rank a different vector: refused on every rank.
    v = torch.full((obj.dim,), float(rank + 1), dtype=torch.float64)
    result["different_vectors"] = _expect_error(
        lambda: valleys.hessian(obj).matvec(v), RuntimeError
    )
    other = _problem()[0]
    if rank == 1:
        with torch.no_grad():
            other[0].weight.add_(0.1)
    result["different_parameters"] = _expect_error(
        lambda: valleys.Objective(other, "mse", shard, distributed=True), ValueError
    )
    result["batch_by_index"] = _expect_error(lambda: obj.batch(torch.arange(2)), ValueError)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, sizes, chunk_sizes, *, errors=False) -> list[dict]:
    world = len(sizes)
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world, port, str(tmp_path), sizes, chunk_sizes,
                                          errors))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("a rank hung")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for r, res in enumerate(results):
        if "crash" in res and not (errors and r == 1):
            pytest.fail(f"rank {r} crashed:\n{res['crash']}")
    return results


@pytest.fixture(scope="module")
def reference() -> dict:
    torch.manual_seed(0)
    model, X, Y = _problem()
    return _quantities(valleys.Objective(model, "mse", (X, Y)))


def _compare(reference: dict, results: list[dict]) -> None:
    for r, res in enumerate(results):
        for key, want in reference.items():
            got = res[key]
            scale = want.abs().max().clamp_min(1e-12)
            error = float((got - want).abs().max() / scale)
            assert error < RTOL, f"rank {r}: {key} differs by {error:.2e} (relative)"


def test_two_ranks_match_one_process_and_fail_loudly(tmp_path, reference):
    results = _launch(tmp_path, sizes=[15, 8], chunk_sizes=[None, 5], errors=True)
    _compare(reference, results)
    for res in results:
        assert res["shard_sizes"].tolist() == [15, 8]
        assert torch.allclose(res["ddp_loss"], reference["loss"], rtol=RTOL)
        assert "ValueError" in res["empty_shard"] and "rank(s) [1] is empty" in res["empty_shard"]
        assert "different vectors" in res["different_vectors"]
        assert "parameters differ across ranks" in res["different_parameters"]
        assert "batch_loss_and_gradient" in res["batch_by_index"]
    assert "float32" in results[1]["bad_rank"] or "dtype" in results[1]["bad_rank"]
    assert "failed on rank(s) [1]" in results[0]["bad_rank"]
    # Rank 1 died: rank 0's next sum raises a CollectiveError instead of hanging.
    assert "CollectiveError" in results[0]["dead_peer"], results[0]["dead_peer"]
    assert results[0]["dead_peer_seconds"] < 60


def test_three_ranks_match_one_process(tmp_path, reference):
    results = _launch(tmp_path, sizes=[10, 8, 5], chunk_sizes=[None, None, None])
    _compare(reference, results)
    assert math.isclose(float(results[2]["n"]), N)


def test_helpers_without_process_group():
    assert vdist.rank() == 0 and vdist.world_size() == 1 and vdist.is_main_process()
    bounds = [vdist.shard_bounds(10, r, 3) for r in range(3)]
    assert [(b.start, b.stop) for b in bounds] == [(0, 4), (4, 7), (7, 10)]
    X, Y = torch.arange(10.0)[:, None], torch.arange(10)
    assert torch.equal(torch.cat([vdist.shard(X, Y, r, 3)[0] for r in range(3)]), X)
    model, X, Y = _problem()
    with pytest.raises(ValueError, match="initialized torch"):
        valleys.Objective(model, "mse", (X, Y), distributed=True)
    obj = valleys.Objective(model, "mse", (X, Y))
    assert obj.reduce(obj.gradient()) is not None and obj.shard_sizes == (N,)
    # The mini-batch gradient matches autograd on the batch's mean loss.
    idx = torch.tensor([3, 1, 3, 20])
    theta = obj.parameters_vector().requires_grad_(True)
    want = torch.autograd.grad(obj.chunk_losses(theta, X[idx], Y[idx]).mean(), theta)[0]
    torch.testing.assert_close(obj.batch_loss_and_gradient(None, idx)[1], want)
    # _sgd (what the ranks run) is train()'s mini-batch SGD on one process.
    sgd = train(obj, lr=LR, steps=SGD_STEPS, batch_size=B, record_every=SGD_STEPS)
    torch.testing.assert_close(_sgd(obj), sgd.theta, rtol=1e-12, atol=1e-12)


def test_per_sample_paths_refuse_a_sharded_objective(monkeypatch):
    """Gram, exact per-sample Hessians and input smoothness need all samples in one process."""
    model, X, Y = _problem()
    obj = valleys.Objective(model, "mse", (X, Y))
    monkeypatch.setattr(obj, "distributed", True)
    from valleys.smoothness import input_gradient_norm
    from valleys.stability import gram_sharpness_nonuniformity, per_sample_hessians

    for call in (
        lambda: gram_sharpness_nonuniformity(obj),
        lambda: per_sample_hessians(obj),
        lambda: input_gradient_norm(obj),
    ):
        with pytest.raises(ValueError, match="does not accept a distributed Objective"):
            call()


def test_init_refuses_more_nccl_processes_than_gpus(monkeypatch):
    """With NCCL, LOCAL_RANK must name a visible GPU; say so instead of a bare CUDA error."""
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
           "LOCAL_RANK": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"one process per GPU.*LOCAL_RANK=1"):
        vdist.init("nccl")
    assert not torch.distributed.is_initialized()


def test_nccl_stages_cpu_bookkeeping_through_the_gpu_but_refuses_a_cpu_model(monkeypatch):
    """Under NCCL the objective's CPU handshake rows go through the rank's GPU (found on an
    H200: refusing them made every NCCL objective fail); a model on the CPU is refused."""
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a, **k: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert vdist.collective_device(torch.device("cpu")) == torch.device("cuda", 0)
    assert vdist.collective_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="NCCL backend reduces CUDA tensors"):
        vdist.check_model_device(torch.device("cpu"))
    vdist.check_model_device(torch.device("cuda", 0))
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a, **k: "gloo")
    assert vdist.collective_device(torch.device("cuda", 0)) == torch.device("cpu")
    vdist.check_model_device(torch.device("cpu"))
