"""Every pooled image network exposes its pre-pool feature map as ``forward_features`` (timm's convention),
and zen reads that map, not the logits."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import proxies
import search_spaces
from proxies.engine import Context
from search_spaces.base import PooledImageNetwork, arch_input_shape
from search_spaces.ofa import OFASupernet

POOLED = {  # small options so that each network builds and runs in well under a second
    "nb201": dict(channels=8, cells_per_stage=1, input_shape=(3, 16, 16)),
    "nb101": dict(channels=8, input_shape=(3, 16, 16)),
    "darts": dict(channels=8, layers=5, input_shape=(3, 16, 16)),
    "ofa": dict(resolutions=(64,), num_classes=10),
    "fbnet": dict(num_classes=10),
    "mcunet": dict(resolutions=(64,), num_classes=10),
    "chain": dict(input_shape=(3, 16, 16)),
}
NO_POOL = {"vit": "a class-token head: nothing is pooled", "mcuvit": "a class-token head: nothing is pooled"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    space = search_spaces.get(name, **POOLED[name])
    arch = space.sample(np.random.default_rng(seed))
    torch.manual_seed(seed)
    x = torch.randn(2, *arch_input_shape(space, arch), generator=torch.Generator().manual_seed(seed))
    return space.build(arch).eval(), x


def test_every_image_space_is_covered():
    image = {n for n in search_spaces.list()
             if getattr(search_spaces.get(n), "input_kind", "image") == "image"}
    assert image == set(POOLED) | set(NO_POOL)


@pytest.mark.parametrize("name", sorted(POOLED))
def test_forward_is_head_of_pooled_features(name):
    net, x = _net(name)
    assert isinstance(net, PooledImageNetwork)
    with torch.no_grad():
        features = net.forward_features(x)
        assert features.dim() == 4 and features.shape[0] == x.shape[0]
        torch.testing.assert_close(net(x), net.forward_head(features), rtol=0, atol=0)
        # The head sees the features only through their spatial mean: that is global average pooling.
        flat = features.mean((2, 3), keepdim=True).expand_as(features)
        torch.testing.assert_close(net.forward_head(flat), net.forward_head(features))


@pytest.mark.parametrize("name", ["nb201", "nb101", "darts", "fbnet"])
def test_classifier_input_is_the_mean_of_the_features(name):
    net, x = _net(name)
    seen: list[torch.Tensor] = []
    handle = net.classifier.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0]))
    with torch.no_grad():
        features = net.forward_features(x)
        net(x)
    handle.remove()
    torch.testing.assert_close(seen[0], features.mean((2, 3)))


def test_ofa_supernet_features_are_its_subnets():
    sup = OFASupernet(num_classes=10).eval()
    arch = sup.space.smallest(64)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sub = sup.subnet(arch).eval()
    with torch.no_grad():
        torch.testing.assert_close(sup.forward_features(x, arch), sub.forward_features(x))
        torch.testing.assert_close(sup(x, arch), sup.forward_head(sup.forward_features(x, arch)))


class _Scale(nn.Module):
    """Multiplies by a constant; no parameters, so zen's weight draws stay the same."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` times the factor."""
        return x * self.factor


@pytest.mark.parametrize("name", ["ofa", "fbnet", "nb101"])
def test_zen_reads_the_pre_pool_map_not_the_logits(name):
    # Scaling the classifier's weights would prove nothing (zen redraws every weight), so scale its
    # output: on logits zen would move by log(10), on the pre-pool map it must not move at all.
    net, x = _net(name)
    batch = proxies.Batch(x, torch.zeros(len(x), dtype=torch.long))
    before = proxies.score(net, batch, ["zen"], seed=0, device="cpu")["zen"]
    net.classifier = nn.Sequential(net.classifier, _Scale(10.0))
    after = proxies.score(net, batch, ["zen"], seed=0, device="cpu")["zen"]
    assert math.isfinite(before)
    assert after == before


def test_zen_names_a_network_without_forward_features():
    space = search_spaces.get("vit", embed_dims=(32,), depths=(1,), heads=(1,), mlp_ratios=(2.0,),
                              input_shape=(3, 16, 16))
    net = space.build(space.sample(np.random.default_rng(0)))
    assert not isinstance(net, PooledImageNetwork)
    x = torch.randn(2, 3, 16, 16)
    ctx = Context(net, proxies.Batch(x, torch.zeros(2, dtype=torch.long)), frozenset({"zen"}), seed=0)
    with pytest.raises(NotImplementedError, match=type(net).__name__):
        proxies.get("zen").fn(ctx)
