"""Proxies of the input-output Jacobian (NASWOT v1 / EPE-NAS) and the neural tangent kernel (TE-NAS)."""

from __future__ import annotations

import torch

from proxies.engine import Context, proxy

NTK_SAMPLES = 16
"""Samples in the NTK: the kernel needs one backward per sample, so it uses the batch's first 16."""


@proxy("jacov", "Jacobian covariance (Mellor et al. 2020 NASWOT v1): -sum(log(l + k) + 1/(l + k))",
       needs={"input_jacobian"})
def jacov(ctx: Context) -> float:
    """Eigenvalues l of the correlation matrix of the per-sample input Jacobians of the summed logits,
    k = 1e-5; BatchNorm in train mode. This is NASLib's ``jacov``."""
    jac = ctx.get("input_jacobian").reshape(ctx.batch.inputs.shape[0], -1).double()
    eig = torch.linalg.eigvalsh(torch.corrcoef(jac))
    k = 1e-5
    return float(-(torch.log(eig + k) + 1.0 / (eig + k)).sum())


@proxy("epe_nas", "EPE-NAS (Lopes et al. 2021): per-class Jacobian correlation score", needs={"input_jacobian"})
def epe_nas(ctx: Context) -> float:
    """Sum over classes c of |sum(log(|corr_c| + k))|, corr_c the correlation of the Jacobians of the
    samples of class c (k = 1e-5); for more than 100 classes the paper's pairwise-difference form."""
    jac = ctx.get("input_jacobian").reshape(ctx.batch.inputs.shape[0], -1).double()
    targets = ctx.batch.targets
    n_classes = int(ctx.get("forward").logits.shape[1])
    k = 1e-5
    per_class = {}
    for c in torch.unique(targets).tolist():
        rows = jac[targets == c]
        corr = torch.corrcoef(rows) if rows.shape[0] > 1 else torch.ones((1, 1), dtype=rows.dtype)
        s = torch.log(corr.abs() + k).sum()
        if n_classes > 100:
            s = s / corr.shape[0]
        if torch.isfinite(s):
            per_class[c] = float(s)
    values = list(per_class.values())
    if n_classes <= 100:
        return float(sum(abs(v) for v in values))
    return float(sum(abs(a - b) for a in values for b in values) / max(len(values), 1))


@proxy("ntk", "TE-NAS (Chen et al. 2021): minus the condition number of the NTK of 16 samples")
def ntk(ctx: Context) -> float:
    """-(lambda_max / lambda_min) of J J^T, J the per-sample gradients of the summed logits w.r.t. every
    weight tensor, BatchNorm in train mode (TE-NAS ranks low condition numbers best, so the value is
    negated). Deviation: the first 16 samples of the batch rather than TE-NAS's batch, for cost."""
    model = ctx.model
    model.train()
    k = min(NTK_SAMPLES, ctx.batch.inputs.shape[0])
    x = ctx.batch.inputs[:k]
    weights = [p for n, p in model.named_parameters() if "weight" in n and p.requires_grad]
    with torch.enable_grad():
        per_sample = model(x).sum(1)
        rows = _batched_rows(per_sample, weights) if x.device.type != "cpu" else None
        if rows is None:
            # One backward per sample: on CPU faster than the vmapped backward, and bit-identical to it.
            rows = _looped_rows(per_sample, weights)
    kernel = rows @ rows.T
    eig = torch.linalg.eigvalsh(kernel)
    return float(-(eig[-1] / eig[0])) if eig[0] > 0 else float("-inf")


def _looped_rows(per_sample: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """(k, P) float64 per-sample gradients, one backward each, written straight into one matrix."""
    k = per_sample.shape[0]
    rows = None
    for i in range(k):
        grads = [g for g in torch.autograd.grad(per_sample[i], weights, retain_graph=i < k - 1, allow_unused=True)
                 if g is not None]
        if rows is None:
            rows = torch.empty((k, sum(g.numel() for g in grads)), dtype=torch.float64, device=per_sample.device)
        start = 0
        for g in grads:
            rows[i, start:start + g.numel()].copy_(g.reshape(-1))
            start += g.numel()
    assert rows is not None
    return rows


def _batched_rows(per_sample: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor | None:
    """(k, P) float64 per-sample gradients from one vmapped backward; None without a batching rule."""
    k = per_sample.shape[0]
    eye = torch.eye(k, device=per_sample.device, dtype=per_sample.dtype)
    try:
        grads = torch.autograd.grad(per_sample, weights, eye, retain_graph=True, is_grads_batched=True,
                                    allow_unused=True)
    except RuntimeError:
        return None
    return torch.cat([g.reshape(k, -1) for g in grads if g is not None], 1).double()
