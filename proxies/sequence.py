"""Training-free metrics for sequence models (Serianni & Kalita, ACL 2023), computed in one shared pass.

The metrics read a model's layers through a plain ``zc_role`` attribute that the zcnas sequence spaces
(``bert``, ``rnn``, ``gpt``, ``vit``) set: ``hidden`` (a layer whose output is the hidden state
[B, T, H]), ``operation`` (the token-mixing block), ``head_proj`` (query/key/value/input projections),
``ffn_act`` (feed-forward or cell activations). Models without these tags raise a ``ValueError`` that the
engine reports as the proxy's error (its value is NaN, never a number). Models with
``embed``/``from_embeddings`` also get ``embedding_jacov``.

One forward pass with hooks and one backward pass of the last hidden state's sum (the authors'
``backward(ones_like(last_hidden_state))``) feed every metric; they form the engine's shared
artefact ``sequence_pass``, so asking for all six costs one pass. Each metric is computed from the
recorded pass only when it is read, so asking for one does not pay for the others.

Definitions (from the authors' notebooks, github.com/aaronserianni/training-free-nas):

* ``hidden_cov``: for the hidden states H of the last layer, the Jacobian-covariance score of the
  correlation matrix of the hidden units over all tokens: ``-sum(log(l + k) + 1 / (l + k))`` over its
  eigenvalues l, k = 1e-5. ``hidden_cov_layers`` gives the score of every layer.
* ``head_confidence``: sum over projections of the mean (over batch and features) of the max over tokens.
* ``head_importance``: sum of |W * dW| over the token-mixing block's linear layers, without layers that
  shrink the width more than 4x (ConvBERT's per-token kernel generator). On the authors' 256-wide models
  this keeps the same layers as their absolute width filter (at least 128 outputs);
  unlike it, it also keeps the 64-wide projections in the convolution blocks of a 128-wide model.
* ``synaptic_diversity``: sum of ||W||_* ||dW||_* (nuclear norms) over the token-mixing linear layers.
* ``activation_distance``: sum of the Hamming-similarity kernel K = C C^T + (1-C)(1-C)^T of the binary
  activation codes C (tokens of the first sequence for [B, T, F] activations, samples for [B, F]).
* ``embedding_jacov``: the same eigenvalue score for the correlation between samples of the gradient with
  respect to the embedding output (the authors' RNN Jacobian score).

Caveat, kept for fidelity: when the last hidden state is a LayerNorm output (post-LN ``bert``, as in the
authors' ELECTRA models), the sum over its features does not depend on the input while LayerNorm's gain
is constant, as it is at initialisation, so the three gradient metrics (``head_importance``,
``synaptic_diversity``, ``embedding_jacov``) there measure float rounding (gradients about 1e-7, some
exactly 0, which makes ``embedding_jacov`` NaN). Measured on four sampled tiny ``bert`` networks under
``ATEN_CPU_CAPABILITY`` default, avx2 and avx512 at 1 and 2 threads, ``head_importance`` and
``synaptic_diversity`` moved by 18-53 % and ``embedding_jacov`` by 1 % or turned NaN, while the other
three metrics agreed to 1e-8. So the ``bert`` space declares these three unavailable
(``unavailable_proxies``; ``proxies.check_available`` refuses them with the reason). The pre-LN ``gpt``
and ``vit`` blocks and the ``rnn`` cells are not affected (the same check: at most 1e-6 apart on gpt and
vit, 1e-3 on rnn's ``hidden_cov``).
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


class SequencePass:
    """What one hooked forward and one backward recorded (detached); each metric is computed on its first
    read, so a search that asks for one metric does not pay for the others (e.g. the nuclear norms)."""

    MISSING = {"head_proj": "attention/projection heads", "ffn_act": "feed-forward or cell activations",
               "operation": "token-mixing (attention) blocks", "emb": "an embed()/from_embeddings() token model"}

    def __init__(self, store: dict[str, list[torch.Tensor]], linears: list[tuple[torch.Tensor, torch.Tensor]],
                 emb_grad: torch.Tensor | None, has_emb: bool) -> None:
        self.store, self.linears, self.emb_grad, self.has_emb = store, linears, emb_grad, has_emb
        self._cache: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        """Metric ``name`` (a float), or a string saying what the model lacks for it."""
        if name not in self._cache:
            with torch.no_grad():
                self._cache[name] = getattr(self, "_" + name)()
        return self._cache[name]

    def _hidden_cov_layers(self) -> list[float]:
        return [eig_score(h.reshape(-1, h.shape[-1]).T) for h in self.store["hidden"]]

    def _hidden_cov(self) -> float:
        h = self.store["hidden"][-1]
        return eig_score(h.reshape(-1, h.shape[-1]).T)

    def _head_confidence(self) -> float | str:
        if not self.store["head_proj"]:
            return self.MISSING["head_proj"]
        return sum(float(p.max(dim=1).values.mean()) for p in self.store["head_proj"] if p.dim() == 3)

    def _activation_distance(self) -> float | str:
        if not self.store["ffn_act"]:
            return self.MISSING["ffn_act"]
        acts = 0.0
        for a in self.store["ffn_act"]:
            c = ((a[0] if a.dim() == 3 else a.reshape(a.shape[0], -1)) > 0).double()
            acts += float((c @ c.T + (1 - c) @ (1 - c).T).sum())
        return acts

    def _head_importance(self) -> float | str:
        if not self.linears:
            return self.MISSING["operation"]
        return sum(float((w * g).abs().sum()) for w, g in self.linears)

    def _synaptic_diversity(self) -> float | str:
        if not self.linears:
            return self.MISSING["operation"]
        return sum(float(torch.linalg.svdvals(w.float()).sum() * torch.linalg.svdvals(g.float()).sum())
                   for w, g in self.linears)

    def _embedding_jacov(self) -> float | str:
        if not self.has_emb:
            return self.MISSING["emb"]
        if self.emb_grad is None:
            return float("nan")
        return eig_score(self.emb_grad.reshape(self.emb_grad.shape[0], -1))


def _shared_pass(model: nn.Module, batch: Batch) -> SequencePass:
    """One hooked forward and one backward of ``model`` on ``batch``, recorded for every sequence metric."""
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
        # weight gradients are copied now: other passes of the same engine call overwrite .grad later
        linears = [(m.weight.detach(), m.weight.grad.detach().clone()) for m in _mixing_linears(model)]
        kept = {role: [t.detach() for t in ts] for role, ts in store.items()}
        return SequencePass(kept, linears, None if emb is None or emb.grad is None else emb.grad.detach(),
                            emb is not None)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        model.zero_grad(set_to_none=True)


def _mixing_linears(model: nn.Module) -> list[nn.Linear]:
    out = []
    for op in _tagged(model, "operation"):
        for m in op.modules():
            if isinstance(m, nn.Linear) and m.weight.grad is not None and 4 * m.out_features >= m.in_features:
                out.append(m)
    return out


def _value(values: SequencePass, name: str) -> float:
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
