"""Training-free metrics for sequence models (Serianni & Kalita, ACL 2023), computed in one shared pass.

The metrics read a model's layers through a plain ``zc_role`` attribute that the zcnas sequence spaces
(``bert``, ``rnn``, ``gpt``, ``vit``) set: ``hidden`` (a layer whose output is the hidden state
[B, T, H]), ``operation`` (the token-mixing block), ``head_proj`` (query/key/value/input projections),
``ffn_act`` (feed-forward or cell activations). Models without these tags raise a ``ValueError`` that the
engine turns into a last-ranked score. Models with ``embed``/``from_embeddings`` also get
``embedding_jacov``.

One forward pass with hooks and one backward pass of the last hidden state's sum (the authors'
``backward(ones_like(last_hidden_state))``) feed every metric; they form the engine's shared
artefact ``sequence_pass``, so asking for all six costs one pass.

Definitions (from the authors' notebooks, github.com/aaronserianni/training-free-nas):

* ``hidden_cov``: for the hidden states H of the last layer, the Jacobian-covariance score of the
  correlation matrix of the hidden units over all tokens: ``-sum(log(l + k) + 1 / (l + k))`` over its
  eigenvalues l, k = 1e-5. ``hidden_cov_layers`` gives the score of every layer.
* ``head_confidence``: sum over projections of the mean (over batch and features) of the max over tokens.
* ``head_importance``: sum of |W * dW| over the token-mixing block's linear layers (tiny kernel-generator
  layers excluded, as the authors' width filter did).
* ``synaptic_diversity``: sum of ||W||_* ||dW||_* (nuclear norms) over the token-mixing linear layers.
* ``activation_distance``: sum of the Hamming-similarity kernel K = C C^T + (1-C)(1-C)^T of the binary
  activation codes C (tokens of the first sequence for [B, T, F] activations, samples for [B, F]).
* ``embedding_jacov``: the same eigenvalue score for the correlation between samples of the gradient with
  respect to the embedding output (the authors' RNN Jacobian score).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from proxies.data import Batch
from proxies.engine import proxy, registry

log = logging.getLogger(__name__)

EIG_K = 1e-5


def _tagged(model: nn.Module, role: str) -> list[nn.Module]:
    return [m for m in model.modules() if getattr(m, "zc_role", None) == role]


def eig_score(rows: torch.Tensor) -> float:
    """``-sum(log(l + k) + 1/(l + k))`` over the eigenvalues of the correlation matrix of ``rows``."""
    x = rows.double()
    if not bool(torch.isfinite(x).all()):
        return float("nan")  # exploding activations (e.g. an unbounded recurrence): ranked last
    x = x - x.mean(dim=1, keepdim=True)
    std = x.norm(dim=1, keepdim=True)
    if bool((std == 0).any()):
        return float("nan")  # a constant unit has no correlation, as np.corrcoef says
    corr = (x / std) @ (x / std).T
    try:
        eig = torch.linalg.eigvalsh(corr)
    except torch.linalg.LinAlgError:  # near-singular: the singular values of a PSD matrix are its eigenvalues
        eig = torch.linalg.svdvals(corr)
    return float(-(torch.log(eig + EIG_K) + 1.0 / (eig + EIG_K)).sum())


def _shared_pass(model: nn.Module, batch: Batch) -> dict[str, Any]:
    """All sequence metrics of ``model`` on ``batch``: one hooked forward, one backward."""
    hidden_mods = _tagged(model, "hidden")
    if not hidden_mods:
        raise ValueError("sequence proxies need a model with tagged layers (zc_role='hidden'), as the bert, "
                         "rnn, gpt and vit spaces build; this model has none")
    store: dict[str, list[torch.Tensor]] = {"hidden": [], "head_proj": [], "ffn_act": []}

    def keeper(role: str):  # noqa: ANN202 - a hook factory
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            store[role].append(out)
        return hook

    handles = [m.register_forward_hook(keeper(role)) for role in store for m in _tagged(model, role)]
    was_training = model.training
    try:
        model.eval()
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            emb = None
            if hasattr(model, "embed") and hasattr(model, "from_embeddings"):
                emb = model.embed(batch.inputs).detach().requires_grad_(True)
                model.from_embeddings(emb)
            else:
                model(batch.inputs)
            store["hidden"][-1].sum().backward()
        return _metrics(model, store, emb)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        model.zero_grad(set_to_none=True)


def _mixing_linears(model: nn.Module) -> list[nn.Linear]:
    out = []
    for op in _tagged(model, "operation"):
        for m in op.modules():
            if isinstance(m, nn.Linear) and m.weight.grad is not None and \
                    m.out_features >= min(128, m.in_features):
                out.append(m)
    return out


def _metrics(model: nn.Module, store: dict[str, list[torch.Tensor]], emb: torch.Tensor | None) -> dict[str, Any]:
    with torch.no_grad():
        layers = [eig_score(h.detach().reshape(-1, h.shape[-1]).T) for h in store["hidden"]]
        conf = sum(float(p.detach().max(dim=1).values.mean()) for p in store["head_proj"] if p.dim() == 3)
        acts = 0.0
        for a in store["ffn_act"]:
            codes = (a.detach()[0] if a.dim() == 3 else a.detach().reshape(a.shape[0], -1)) > 0
            c = codes.double()
            acts += float((c @ c.T + (1 - c) @ (1 - c).T).sum())
        linears = _mixing_linears(model)
        importance = sum(float((m.weight * m.weight.grad).abs().sum()) for m in linears)
        diversity = sum(float(torch.linalg.svdvals(m.weight.float()).sum()
                              * torch.linalg.svdvals(m.weight.grad.float()).sum()) for m in linears)
        jac = float("nan")
        if emb is not None and emb.grad is not None:
            jac = eig_score(emb.grad.reshape(emb.shape[0], -1))
    missing = {"head_proj": "attention/projection heads", "ffn_act": "feed-forward or cell activations",
               "operation": "token-mixing (attention) blocks"}
    return {"hidden_cov_layers": layers, "hidden_cov": layers[-1],
            "head_confidence": conf if store["head_proj"] else missing["head_proj"],
            "activation_distance": acts if store["ffn_act"] else missing["ffn_act"],
            "head_importance": importance if linears else missing["operation"],
            "synaptic_diversity": diversity if linears else missing["operation"],
            "embedding_jacov": jac if emb is not None else "an embed()/from_embeddings() token model"}


def _value(values: dict[str, Any], name: str) -> float:
    """The metric ``name``, or a ``ValueError`` saying what the model lacks for it."""
    value = values[name]
    if isinstance(value, str):
        raise ValueError(f"{name} needs {value}; this model has none")
    return float(value)


def hidden_cov_layers(model: nn.Module, batch: Batch) -> list[float]:
    """The hidden-covariance score of every tagged layer, first to last."""
    return list(_shared_pass(model, batch)["hidden_cov_layers"])


def _register(name: str, description: str) -> None:
    if name in registry:  # never break the package on a name another module took first
        log.warning("proxy %s is already registered; the sequence version is not", name)
        return
    if artefact is None:  # an engine without shared artefacts: each proxy runs its own pass
        def legacy(model: nn.Module, batch: Batch) -> float:
            return _value(_shared_pass(model, batch), name)
        proxy(name, description, needs_grad=True)(legacy)
        return

    def read(ctx: Any) -> float:
        return _value(ctx.get("sequence_pass"), name)
    proxy(name, description, needs=("sequence_pass",))(read)


try:
    from proxies.engine import artefact
except ImportError:  # pragma: no cover - the foundation engine
    artefact = None
else:
    artefact("sequence_pass")(lambda ctx: _shared_pass(ctx.model, ctx.batch))

_register("hidden_cov", "hidden covariance (Serianni & Kalita 2023): eigen-score of the last layer's "
          "hidden-unit correlations; sequence models")
_register("head_confidence", "head confidence (Serianni & Kalita 2023): sum of mean max-over-tokens of "
          "the attention projections; sequence models")
_register("head_importance", "head importance (Michel et al. 2019 via Serianni & Kalita): sum |W dW| of "
          "the token-mixing layers; sequence models")
_register("synaptic_diversity", "synaptic diversity (Zhou et al. 2022): sum ||W||_* ||dW||_* of the "
          "token-mixing layers; sequence models")
_register("activation_distance", "activation distance: Hamming-kernel sum of the FFN/cell activation "
          "codes (Mellor et al. 2021 via Serianni & Kalita); sequence models")
_register("embedding_jacov", "Jacobian covariance w.r.t. the token embeddings (Mellor et al. 2021, the "
          "RNN form of Serianni & Kalita); token models")

__all__ = ["eig_score", "hidden_cov_layers"]
