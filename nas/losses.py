"""Training losses beyond cross-entropy: AAM-softmax, the speaker-embedding loss of ECAPA-TDNN.

**Additive angular margin softmax** (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019; used by Desplanques et al., "ECAPA-TDNN", Interspeech 2020, with margin 0.2 and
scale 30): the logits are the cosines between the L2-normalised embedding and one L2-normalised weight
vector per class, times a scale ``s``; in the loss the target class's angle is widened by ``m`` radians,
``s * cos(theta_y + m)``, so an embedding must sit closer to its own class than the plain softmax asks.
Past ``theta_y = pi - m`` the cosine would turn upwards again; there the target logit goes on as
``s * (cos(theta_y) - m * sin(m))``, which keeps falling with the angle (as ArcFace's released training code).

Example:
    >>> head = AAMSoftmax(embedding=192, num_classes=10)
    >>> e, y = torch.randn(4, 192), torch.tensor([0, 1, 2, 3])
    >>> loss = head.loss(head(e), y)   # margin on the target; head(e) alone is s * cos, no margin
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AAMSoftmax"]


class AAMSoftmax(nn.Module):
    """Scaled cosine logits of an embedding against learned class centres, with an additive angular margin
    in :meth:`loss` (see the module doc).

    Args:
        embedding: the embedding's width.
        num_classes: classes (speakers).
        margin: the angular margin ``m`` in radians (ECAPA-TDNN: 0.2).
        scale: the scale ``s`` of the cosines (ECAPA-TDNN: 30).

    Example:
        >>> head = AAMSoftmax(192, 10, margin=0.2, scale=30.0)
        >>> head(torch.randn(2, 192)).shape
        torch.Size([2, 10])
    """

    def __init__(self, embedding: int, num_classes: int, margin: float = 0.2, scale: float = 30.0) -> None:
        super().__init__()
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"AAM margin must be in [0, pi/2) radians, got {margin}")
        if not scale > 0:
            raise ValueError(f"AAM scale must be positive, got {scale}")
        self.margin, self.scale = float(margin), float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding))
        nn.init.xavier_normal_(self.weight)

    def centres(self) -> torch.Tensor:
        """The unit-length class centres ``(num_classes, embedding)``."""
        return F.normalize(self.weight, dim=1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``scale * cos`` between each embedding and each class centre (no margin): ``(N, num_classes)``."""
        return self.scale * F.linear(F.normalize(embeddings.float(), dim=1), self.centres())

    def with_margin(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``logits`` of :meth:`forward` with the target class's angle widened by the margin."""
        # Clamped off +-1: the sine's gradient is infinite there
        cos = (logits / self.scale).clamp(-1 + 1e-7, 1 - 1e-7)
        target = cos.gather(1, labels[:, None])
        sin = (1 - target * target).sqrt()
        m = self.margin
        widened = target * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
        widened = torch.where(target > math.cos(math.pi - m), widened, target - m * math.sin(m))
        return (self.scale * cos).scatter(1, labels[:, None], self.scale * widened)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """AAM-softmax: cross-entropy of the margin logits (mean over the batch)."""
        return F.cross_entropy(self.with_margin(logits, labels), labels)
