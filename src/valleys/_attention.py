"""Second-order products through attention: fused kernels have no double backward.

``F.scaled_dot_product_attention`` dispatches to fused kernels (flash, memory-efficient, cuDNN;
on CPU too since torch 2.1) whose backward is not itself differentiable, so a Hessian-vector
product through them fails ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_
backward is not implemented"). The math backend computes the same attention from matmuls and a
softmax, which autograd differentiates any number of times.

:func:`uses_fused_attention` finds out, by watching one forward pass at the ATen level, whether a
model reaches a fused kernel; :func:`math_attention` selects the math backend for the code inside
it only (``torch.nn.attention.sdpa_kernel`` restores the previous selection on exit), so the
user's global settings are never changed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["math_attention", "needs_math_attention", "uses_fused_attention"]

# ATen kernels behind F.scaled_dot_product_attention that have no double backward.
_FUSED_KERNELS = (
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention",
    "_flash_attention_forward",
    "_efficient_attention_forward",
)


class _KernelWatcher(TorchDispatchMode):
    """Records whether any fused attention kernel runs while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.fused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if not self.fused:
            name = func.__name__ if hasattr(func, "__name__") else str(func)
            self.fused = any(kernel in name for kernel in _FUSED_KERNELS)
        return func(*args, **(kwargs or {}))


def uses_fused_attention(forward: Callable[[], object]) -> bool:
    """Whether running ``forward()`` (a closure over one small batch) reaches a fused kernel."""
    watcher = _KernelWatcher()
    with watcher:
        forward()
    return watcher.fused


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Within the block, ``F.scaled_dot_product_attention`` uses its math backend only."""
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def needs_math_attention(forward: Callable[[], object]) -> bool:
    """:func:`uses_fused_attention`, saying so once (a warning) when the answer is yes."""
    if not uses_fused_attention(forward):
        return False
    warnings.warn(
        "the model reaches a fused scaled_dot_product_attention kernel (flash or "
        "memory-efficient), which has no double backward; valleys evaluates it with the math "
        "backend inside its own computations (same values, your global settings unchanged)",
        stacklevel=5)
    return True
