r"""Tail index of gradient noise: the block-sum estimator and a maximum-likelihood α-stable fit.

**Block-sum estimator** (M. Mohammadi, A. Mohammadpour, H. Ogata, "On estimating the tail index
and the spectral measure of multivariate α-stable distributions", Metrika 78, 2015, Cor. 2.4;
used on gradient noise by U. Şimşekli, L. Sagun, M. Gürbüzbalaban, "A tail-index analysis of
stochastic gradient noise in deep neural networks", ICML 2019, code ``umutsimsekli/
sgd_tail_index``). For i.i.d. symmetric α-stable ``X_1..X_N`` (scalars or vectors) with
``N = K1·K2``, the block sums ``Y_j = Σ_{i=1}^{K1} X_{(j−1)K1+i}`` are distributed as
``K1^{1/α} X_1``, so

.. math::  \widehat{1/α} = \frac{1}{\log K1}\Big(\frac1{K2}\sum_{j=1}^{K2}\log‖Y_j‖
           − \frac1N\sum_{i=1}^N \log‖X_i‖\Big).

For vectors the norms ``‖·‖`` are Euclidean (rotationally invariant or independent-coordinate
stable vectors also scale as ``K1^{1/α}``). The estimate is not confined to ``(0, 2]``: noise
with finite variance gives values near 2 (above 2 by sampling error), and a non-positive
``1/α̂`` is reported as ``α̂ = inf``.

The estimate is the mean of ``K2`` independent block terms
``d_j = (log‖Y_j‖ − (1/K1)Σ_{i∈j} log‖X_i‖)/log K1``; the confidence interval is a percentile
bootstrap over blocks (whole blocks resampled with replacement; resampling single samples would
put duplicates of large values inside a block and bias ``log‖Y_j‖`` upwards). ``K1`` defaults
to ``⌊√N⌋`` and only the first ``K1·⌊N/K1⌋`` samples enter (recorded as ``n_used``);
Şimşekli et al. take the largest divisor of ``N`` not above ``√N`` instead, which fails for
prime ``N``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from valleys._checks import integer, is_integral, is_real, seed_value
from valleys._records import record_to_dict
from valleys.errors import ArgumentTypeError, ArgumentValueError

__all__ = ["StableFit", "TailIndexResult", "fit_stable", "tail_index"]

#: Below this many samples the estimate is too noisy to say much (about ±0.2 in α at α = 1.5).
MIN_SAMPLES = 1000


@dataclass(frozen=True)
class TailIndexResult:
    """Outcome of :func:`tail_index`.

    Attributes:
        alpha: the estimate ``α̂`` (``inf`` when ``1/α̂ <= 0``).
        interval: ``(low, high)`` bootstrap percentile interval of ``α̂`` at ``level``.
        inv_alpha: the raw estimate of ``1/α`` (unbiased-ish, unlike its inverse).
        level: confidence level of ``interval``.
        n: samples given; ``n_used = k1·k2`` of them enter.
        k1, k2: block length and number of blocks.
        kind: ``"scalar"`` (1-D input) or ``"vector"`` (rows of a 2-D input, their norms).
        num_bootstrap, seed: the bootstrap's size and seed.
        wall_time: seconds spent.
    """

    alpha: float
    interval: tuple[float, float]
    inv_alpha: float
    level: float
    n: int
    n_used: int
    k1: int
    k2: int
    kind: str
    num_bootstrap: int
    seed: int
    wall_time: float

    @property
    def heavy_tailed(self) -> bool:
        """Whether the whole interval lies below 2 (infinite variance at that confidence)."""
        return self.interval[1] < 2.0

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)


def _as_tensor(samples: Any) -> torch.Tensor:
    if isinstance(samples, torch.Tensor):
        x = samples.detach()
    elif isinstance(samples, np.ndarray | list | tuple):
        try:
            x = torch.as_tensor(np.asarray(samples))
        except (TypeError, ValueError, RuntimeError) as error:
            raise ArgumentTypeError(f"samples must be an array of real numbers, got "
                                    f"{type(samples).__name__} that NumPy/torch cannot convert "
                                    f"({error})") from None
    else:
        raise ArgumentTypeError(
            f"samples must be a torch tensor or a NumPy array, got {type(samples).__name__}"
        )
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise ArgumentTypeError(f"samples must be real numbers, got dtype {x.dtype}")
    if x.ndim not in (1, 2):
        raise ArgumentValueError(
            f"samples must be 1-D (scalars) or 2-D (one vector per row), got shape "
            f"{tuple(x.shape)}; flatten scalars with .reshape(-1)"
        )
    x = x.cpu().to(torch.float64)  # a cheap statistic: float64 on the host, whatever the input
    if not torch.isfinite(x).all():
        raise ArgumentValueError("samples contain NaN or infinite values; drop them first")
    if x.shape[0] > 1 and bool((x == x[0]).all()):
        raise ArgumentValueError(
            "all samples are equal, so they carry no information on a tail; pass "
            "the centred noise (e.g. mini-batch gradient minus the full gradient)")
    return x


def _log_norms(x: torch.Tensor, vector: bool) -> torch.Tensor:
    return torch.log((torch.linalg.vector_norm(x, dim=-1) if vector else x.abs())
                     + np.spacing(1.0))


def _block_terms(x: torch.Tensor, k1: int, vector: bool) -> torch.Tensor:
    """``d_j = (log‖Y_j‖ − (1/K1) Σ_{i∈j} log‖X_i‖)/log K1`` per block; ``1/α̂ = mean_j d_j``.

    ``x`` has shape ``(N, d)`` (vectors) or ``(N,)`` (scalars) with ``N = k1·k2``.
    """
    k2 = x.shape[0] // k1
    blocks = x.reshape(k2, k1, *x.shape[1:])
    sums = blocks.sum(dim=1)
    return (_log_norms(sums, vector) - _log_norms(blocks, vector).mean(dim=1)) / math.log(k1)


def _to_alpha(inv: float) -> float:
    return 1.0 / inv if inv > 0 else math.inf


def tail_index(
    samples: Any,
    *,
    block_size: int | None = None,
    num_bootstrap: int = 200,
    level: float = 0.95,
    seed: int = 0,
    min_samples: int = MIN_SAMPLES,
) -> TailIndexResult:
    """Tail index ``α̂`` of i.i.d. symmetric noise by the block-sum estimator (module docstring).

    Args:
        samples: a 1-D tensor/array of scalars, or a 2-D one whose rows are noise vectors
            (their Euclidean norms are used). The noise should be centred (e.g. mini-batch
            gradient minus the full gradient); nothing is subtracted here.
        block_size: ``K1`` (default ``⌊√N⌋``); at least 2, with at least 2 blocks.
        num_bootstrap: bootstrap resamples of the blocks (0: the interval is ``(α̂, α̂)``).
            A percentile interval from a handful of resamples is coarse and can even
            miss ``α̂`` (all of 5 replicates fall on one side with probability 1/16);
            use a few hundred.
        level: confidence level of the interval, in ``(0, 1)``.
        seed: seeds the bootstrap (same seed, same interval).
        min_samples: below this many samples a ``UserWarning`` says the estimate is unreliable.

    Returns:
        A :class:`TailIndexResult` with ``.alpha`` and ``.interval``.

    Accuracy (tests, fixed seeds): ``10^5`` scipy ``levy_stable`` samples at α = 1.2, 1.5, 1.8
    and Gaussians give ``α̂`` within 0.1 of the truth.
    """
    started = time.perf_counter()
    x = _as_tensor(samples)
    vector = x.ndim == 2
    N = x.shape[0]
    if N < 4:
        raise ArgumentValueError(f"the block-sum estimator needs at least 4 samples, got {N}")
    k1 = math.isqrt(N) if block_size is None else block_size
    if (not is_integral(k1) or isinstance(k1, bool) or k1 < 2
            or N // k1 < 2):
        raise ArgumentValueError(
            f"block_size must be an integer >= 2 leaving at least 2 blocks of the {N} samples, "
            f"got {block_size!r}"
        )
    k1 = int(k1)
    if (isinstance(level, bool) or not is_real(level)
            or not 0.0 < level < 1.0):
        raise ArgumentValueError(f"level must lie in (0, 1), got {level!r}")
    level = float(level)
    num_bootstrap = integer(num_bootstrap, "num_bootstrap", minimum=0)
    seed = seed_value(seed)
    min_samples = integer(min_samples, "min_samples", minimum=0)
    if N < min_samples:
        warnings.warn(
            f"tail_index: only {N} samples (fewer than {min_samples}); the block-sum estimate of "
            f"α is then too noisy to say much (the interval will be wide). Collect more noise "
            "samples (more mini-batches, or flatten coordinates).",
            UserWarning,
            stacklevel=2,
        )
    k2 = N // k1
    used = x[: k1 * k2]
    terms = _block_terms(used, k1, vector)
    inv = float(terms.mean())
    low = high = _to_alpha(inv)
    if num_bootstrap > 0:
        # The estimate is a mean of K2 independent block terms, so whole blocks are resampled
        # (resampling single samples would put duplicates inside blocks and bias the sums).
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(k2, (num_bootstrap, k2), generator=gen)
        boot = terms[idx].mean(dim=1).numpy()
        tail = (1.0 - level) / 2.0
        q_low, q_high = np.quantile(boot, [tail, 1.0 - tail])
        # α = 1/(1/α) is decreasing, so the bounds swap.
        low, high = _to_alpha(float(q_high)), _to_alpha(float(q_low))
    return TailIndexResult(
        alpha=_to_alpha(inv), interval=(low, high), inv_alpha=inv, level=level, n=N,
        n_used=k1 * k2, k1=k1, k2=k2, kind="vector" if vector else "scalar",
        num_bootstrap=num_bootstrap, seed=seed, wall_time=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class StableFit:
    """Maximum-likelihood fit of a symmetric, centred α-stable law ``S_α(σ, 0, 0)``.

    Attributes: ``alpha``, ``scale`` (σ), ``log_likelihood`` (mean per sample), ``n_used``
    (size of the subsample fitted), ``seed``, ``wall_time``.
    """

    alpha: float
    scale: float
    log_likelihood: float
    n_used: int
    seed: int
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        return record_to_dict(self)


def fit_stable(samples: Any, *, max_samples: int = 200, seed: int = 0) -> StableFit:
    """Maximum-likelihood ``(α, σ)`` of a symmetric centred α-stable law, for comparison.

    Maximizes the mean of ``scipy.stats.levy_stable.logpdf(x; α, 0, 0, σ)`` over
    ``α ∈ [0.1, 2]`` and ``σ > 0`` (Nelder–Mead from McCulloch's quantile estimate, stopped at
    ``|Δα| < 0.01``). Cost: scipy's density is a numerical integral, about 0.4–1 ms per sample
    and evaluation, and the fit takes some 40–80 evaluations, so only a random subsample of
    ``max_samples`` is fitted: measured 6 s for 100 and 8–15 s for 200–500 samples on one busy
    core. Its sampling error is large at these sizes (about ±0.2 in α at 200 samples); it is
    meant as a cross-check of :func:`tail_index`, not a replacement. Scalars only.
    """
    from scipy import optimize, stats

    started = time.perf_counter()
    x = _as_tensor(samples)
    if x.ndim != 1:
        raise ArgumentValueError("fit_stable takes 1-D samples (scalars)")
    max_samples = integer(max_samples, "max_samples", minimum=10)
    seed = seed_value(seed)
    data = x.numpy()
    if data.size > max_samples:
        data = np.random.default_rng(seed).choice(data, size=max_samples, replace=False)
    try:  # McCulloch's quantile estimator: a fast, consistent starting point
        a0, _, _, s0 = stats.levy_stable._fitstart(data)
    except Exception:  # a private scipy helper: any failure just means a plain start
        a0, s0 = 1.5, float(np.median(np.abs(data))) or 1.0
    a0 = float(np.clip(a0, 0.2, 1.99))
    s0 = float(max(s0, 1e-12))

    def nll(p: np.ndarray) -> float:
        alpha, log_scale = float(p[0]), float(p[1])
        if not 0.1 <= alpha <= 2.0:
            return np.inf
        value = stats.levy_stable.logpdf(data, alpha, 0.0, loc=0.0, scale=math.exp(log_scale))
        return -float(np.mean(value)) if np.all(np.isfinite(value)) else np.inf

    res = optimize.minimize(nll, np.array([a0, math.log(s0)]), method="Nelder-Mead",
                            options={"xatol": 1e-2, "fatol": 1e-4, "maxfev": 100})
    return StableFit(alpha=float(res.x[0]), scale=math.exp(float(res.x[1])),
                     log_likelihood=-float(res.fun), n_used=int(data.size), seed=seed,
                     wall_time=time.perf_counter() - started)
