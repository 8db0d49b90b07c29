"""Curvature callbacks for training frameworks (optional extras).

* :class:`valleys.integrations.lightning.SharpnessCallback` for PyTorch Lightning
  (``pip install valleys[lightning]``);
* :class:`valleys.integrations.huggingface.SharpnessCallback` for the Hugging Face
  ``transformers.Trainer`` (``pip install valleys[hf]``).

Both log, every ``every_n_steps`` optimizer steps, the sharpness ``λ_1(∇²L)`` of a fixed
evaluation batch (Cohen et al., ICLR 2021), its top ``k`` eigenvalues, the preconditioned
sharpness ``λ_1(P⁻¹H)`` of Adam-family optimizers (Cohen et al., arXiv 2207.14484) and the
ratio to the optimizer's stability threshold, with warm-started eigensolvers; see
:mod:`valleys.integrations._common`. The submodules are imported on demand only, so
``import valleys`` (and ``import valleys.integrations``) never imports lightning or transformers.
"""

from __future__ import annotations

__all__: list[str] = []
