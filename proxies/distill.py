"""Distillation-aware proxies (DisWOT, Dong et al., CVPR 2023): how alike an untrained student is to a
trained teacher, without training.

Two matrices describe a network on one batch, both independent of its widths and resolution, so that a
student and a teacher of different shapes compare:

- **semantic**: the class-correlation of Grad-CAM maps. For every class ``c`` the Grad-CAM map of each
  image (ReLU of the pre-pool feature channels weighted by the spatial mean of the class logit's
  gradient, Selvaraju et al. 2017), averaged over the batch, gives ``G`` (classes x pixels); the
  matrix is ``G G^T`` after L2-normalising each class map, divided by its Frobenius norm;
- **relation**: the sample relation of the pre-pool features, ``A A^T`` of the row-normalised flattened
  maps (batch x batch, as similarity-preserving distillation, Tung & Mori 2019), divided by its
  Frobenius norm.

``diswot = -(|S_t - S_s| + |R_t - R_s|)`` (Frobenius norms; higher: closer to the teacher) and
``diswot_relation = -|R_t - R_s|``. The teacher's matrices are computed once (eval mode, its trained
statistics) and travel with the batch (:func:`with_teacher`); the student is scored at initialisation in
train mode like every proxy. Networks must expose ``forward_features``/``forward_head`` (timm's convention,
:class:`search_spaces.base.PooledImageNetwork`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from proxies.data import Batch
from proxies.engine import Context, artefact, proxy

TEACHER_PROXIES = frozenset({"diswot", "diswot_relation"})
"""Proxies that compare with a trained teacher: computed only when a teacher is given (``--teacher``)."""


@dataclass(frozen=True)
class TeacherReference:
    """A teacher's semantic (classes x classes) and relation (batch x batch) matrices on one batch."""

    semantic: torch.Tensor
    relation: torch.Tensor
    digest: str

    def to(self, device: torch.device | str) -> TeacherReference:
        """The same matrices on ``device``."""
        return replace(self, semantic=self.semantic.to(device), relation=self.relation.to(device))


def _pooled_parts(model: nn.Module) -> None:
    if not callable(getattr(model, "forward_features", None)) or not callable(getattr(model, "forward_head", None)):
        raise NotImplementedError(f"DisWOT reads the pre-pool feature map and the head of the network "
                                  f"(forward_features/forward_head), which {type(model).__name__} lacks")


def network_matrices(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantic and relation matrices of ``model`` on ``inputs`` in the model's current mode."""
    _pooled_parts(model)
    with torch.no_grad():
        features = model.forward_features(inputs)
    features = features.detach().float().requires_grad_(True)
    logits = model.forward_head(features)
    maps = []
    for c in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[:, c].sum(), features, retain_graph=c + 1 < logits.shape[1])
        weights = grad.mean(dim=(2, 3), keepdim=True)  # Grad-CAM's channel weights, per image
        maps.append(F.relu((weights * features).sum(dim=1)).mean(dim=0).flatten())
    with torch.no_grad():
        g = F.normalize(torch.stack(maps).double(), dim=1)
        semantic = g @ g.T
        a = F.normalize(features.detach().flatten(1).double(), dim=1)
        relation = a @ a.T
        return semantic / semantic.norm().clamp_min(1e-12), relation / relation.norm().clamp_min(1e-12)


def teacher_reference(teacher: nn.Module, inputs: torch.Tensor) -> TeacherReference:
    """The teacher's matrices on ``inputs`` in eval mode (its trained statistics)."""
    was_training = teacher.training
    teacher.eval()
    try:
        semantic, relation = network_matrices(teacher, inputs)
    finally:
        teacher.train(was_training)
    digest = hashlib.sha1(semantic.cpu().numpy().tobytes() + relation.cpu().numpy().tobytes()).hexdigest()[:12]
    return TeacherReference(semantic.cpu(), relation.cpu(), digest)


def with_teacher(batch: Batch, teacher: nn.Module, teacher_shape: tuple[int, int, int] | None = None) -> Batch:
    """``batch`` carrying ``teacher``'s matrices (computed on the batch resized to ``teacher_shape``).

    The batch's name gains the teacher's digest, so cached values of the teacher-aware proxies are keyed
    by the teacher as well as by the images.
    """
    device = next(teacher.parameters()).device
    shown = batch.resized(tuple(teacher_shape[1:])) if teacher_shape else batch
    reference = teacher_reference(teacher, shown.inputs.to(device))
    return Batch(batch.inputs, batch.targets, f"{batch.name}+teacher-{reference.digest}", teacher=reference)


@artefact("diswot_matrices")
def _student_matrices(ctx: Context) -> tuple[torch.Tensor, torch.Tensor, TeacherReference]:
    reference = ctx.batch.teacher
    if reference is None:
        raise ValueError("diswot compares a student with a trained teacher: give --teacher DIR (a `nas train` "
                         "output), or proxies.distill.with_teacher(batch, teacher)")
    ctx.model.train()
    semantic, relation = network_matrices(ctx.model, ctx.batch.inputs)
    if semantic.shape != reference.semantic.shape:
        raise ValueError(f"the student has {semantic.shape[0]} classes, the teacher {reference.semantic.shape[0]}")
    return semantic, relation, reference.to(semantic.device)


@proxy("diswot", "DisWOT: -(semantic + relation distance) of the student's Grad-CAM class correlation and "
       "sample relation to a trained teacher's (needs --teacher)", needs={"diswot_matrices"})
def diswot(ctx: Context) -> float:
    """Minus the Frobenius distances of the semantic and relation matrices to the teacher's."""
    semantic, relation, ref = ctx.get("diswot_matrices")
    return -float((semantic - ref.semantic).norm() + (relation - ref.relation).norm())


@proxy("diswot_relation", "DisWOT's sample-relation term alone: -|R_teacher - R_student| (needs --teacher)",
       needs={"diswot_matrices"})
def diswot_relation(ctx: Context) -> float:
    """Minus the Frobenius distance of the sample-relation matrix to the teacher's."""
    _, relation, ref = ctx.get("diswot_matrices")
    return -float((relation - ref.relation).norm())
