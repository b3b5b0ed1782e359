"""How each image space's networks are trained from scratch: one :class:`Recipe` per space, with its source.

Every recipe uses a cosine learning-rate schedule to zero, stepped after every batch (NAS-Bench-201 and
NAS-Bench-101 step per batch; DARTS steps per epoch, which differs by at most one epoch's worth of
decay), no warm-up, and random crop (zero padding 4) + horizontal flip.

- ``nb201``: NAS-Bench-201's (Dong & Yang, ICLR 2020, "NAS-Bench-201", Sec. 2.3 and its
  ``configs/nas-benchmark/hyper-opts/200E.config``): SGD with Nesterov momentum 0.9, lr 0.1, weight
  decay 5e-4, batch 256, 200 epochs.
- ``nb101``: NAS-Bench-101's (Ying et al., ICML 2019; ``nasbench/lib/config.py`` and
  ``model_builder.py``): RMSProp with momentum 0.9 and epsilon 1.0, lr 0.2 (0.1 per TPU shard, 2 shards),
  weight decay 1e-4, batch 256, 108 epochs. torch's RMSprop adds epsilon outside the root and starts the
  square average at 0 where TensorFlow's adds it inside and starts at 1: a close approximation.
- ``darts``: DARTS's evaluation recipe (Liu et al., ICLR 2019, Sec. A.2 and ``cnn/train.py``): SGD with
  momentum 0.9 (no Nesterov), lr 0.025, weight decay 3e-4, batch 96, 600 epochs, cutout 16, auxiliary
  head weight 0.4 (32x32 inputs and larger), drop-path probability 0.2 rising linearly over the epochs,
  gradient clipping at norm 5. DARTS trained 20 cells of 36 channels; the space's defaults are
  NAS-Bench-301's 8 cells of 32 (``--space-option layers=20 channels=36`` for DARTS's own).
- ``ofa`` and ``fbnet``: once-for-all's subnet training (Cai et al., ICLR 2020, ``train_ofa_net.py``),
  the MobileNetV3 family's usual recipe: SGD with Nesterov momentum 0.9, lr 0.1 per 256 images (scaled
  linearly with the batch, Goyal et al. 2017, when ``--lr`` is not given), weight decay 3e-5 on weights
  only (none on batch-norm and biases), label smoothing 0.1, batch 256, 150 epochs. FBNet's own paper
  trained on ImageNet with a step schedule; HW-NAS-Bench's CIFAR-100 FBNet space publishes no recipe.

- ``tdnn``: ECAPA-TDNN's (Desplanques et al., Interspeech 2020, Sec. 3.2): Adam, peak lr 1e-3 (the paper
  cycles it between 1e-8 and 1e-3, triangular2; here the common cosine schedule), weight decay 2e-5 (as L2,
  Adam's), batch 128 of 2-s crops; no image augmentation (the speaker data add noise, :mod:`nas.audio_data`).
  The paper's AAM-softmax (margin 0.2, scale 30) is ``nas supernet train --loss aam``.

Any other space gets the ``nb201`` recipe. ``epochs``, ``batch_size`` and ``lr`` override the defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["RECIPES", "Recipe", "recipe_for"]


@dataclass(frozen=True)
class Recipe:
    """Optimiser, schedule, regularisation and augmentation of one training run.

    Example:
        >>> recipe_for("nb201", epochs=3).epochs
        3
    """

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"  # "sgd", "rmsprop" or "adam"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = True  # False: no weight decay on batch-norm weights and biases
    label_smoothing: float = 0.0
    pad: int = 4
    flip: bool = True
    cutout: int = 0
    aux_weight: float = 0.0  # DARTS's auxiliary head; used only where the space's network has one
    drop_path: float = 0.0  # final drop-path probability (DARTS cells only)
    grad_clip: float | None = None
    scale_lr_with_batch: bool = False  # a --batch-size without --lr scales lr linearly (Goyal et al. 2017)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-able values."""
        return dataclasses.asdict(self)


RECIPES: dict[str, Recipe] = {
    "nb201": Recipe(epochs=200, batch_size=256, lr=0.1, weight_decay=5e-4,
                    source="NAS-Bench-201 (Dong & Yang, ICLR 2020)"),
    "nb101": Recipe(epochs=108, batch_size=256, lr=0.2, optimizer="rmsprop", nesterov=False, weight_decay=1e-4,
                    source="NAS-Bench-101 (Ying et al., ICML 2019)"),
    "darts": Recipe(epochs=600, batch_size=96, lr=0.025, nesterov=False, weight_decay=3e-4, cutout=16,
                    aux_weight=0.4, drop_path=0.2, grad_clip=5.0,
                    source="DARTS evaluation (Liu et al., ICLR 2019)"),
    "ofa": Recipe(epochs=150, batch_size=256, lr=0.1, weight_decay=3e-5, decay_norm_and_bias=False,
                  label_smoothing=0.1, scale_lr_with_batch=True,
                  source="once-for-all subnet training (Cai et al., ICLR 2020)"),
}
RECIPES["tdnn"] = Recipe(epochs=100, batch_size=128, lr=1e-3, optimizer="adam", nesterov=False, weight_decay=2e-5,
                         pad=0, flip=False, source="ECAPA-TDNN (Desplanques et al., Interspeech 2020)")
RECIPES["fbnet"] = dataclasses.replace(RECIPES["ofa"], source="MobileNetV3 family, as once-for-all (Cai et al.)")
"""The default recipe of each space (see the module docstring for the sources)."""


def recipe_for(space: str, epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
               base: Recipe | None = None) -> Recipe:
    """``base`` (default: the space's recipe) with ``epochs``, ``batch_size`` and ``lr`` overridden."""
    recipe = base or RECIPES.get(space, RECIPES["nb201"])
    for name, value in (("epochs", epochs), ("batch-size", batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    if lr is not None and not lr > 0:
        raise ValueError(f"--lr must be positive, got {lr}")
    changes: dict[str, Any] = {}
    if epochs is not None:
        changes["epochs"] = int(epochs)
    if batch_size is not None:
        changes["batch_size"] = int(batch_size)
        if lr is None and recipe.scale_lr_with_batch and batch_size != recipe.batch_size:
            changes["lr"] = recipe.lr * batch_size / recipe.batch_size
    if lr is not None:
        changes["lr"] = float(lr)
    return dataclasses.replace(recipe, **changes)
