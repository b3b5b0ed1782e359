"""The chain space and its function-preserving transformations (Net2WiderNet, Net2DeeperNet) on real images."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import search_spaces
from proxies.data import calibration_batch
from search_spaces import ArchError
from search_spaces.chain import ChainSpace, deeper, wider

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLAIN = "c3-8,c5-8,p,c3-16,f-32,f-16"
RESIDUAL = "c3-8,r3-8,p,c3-16,r3-16,r3-24"
DENSE = "c3-8,d3-4.4.6,c1-10,a,d3-4.4,f-8"


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """32 real CIFAR-10 images, normalised as the proxies see them."""
    return calibration_batch(32).inputs


def trained_like(space: ChainSpace, text: str, images: torch.Tensor) -> tuple[tuple, torch.nn.Module]:
    """A network with non-trivial BatchNorm statistics and affine parameters, in eval mode."""
    arch = space.from_string(text)
    torch.manual_seed(0)
    net = space.build(arch).train()
    with torch.no_grad():
        for _ in range(3):
            net(images + 0.3 * torch.randn_like(images))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return arch, net.eval()


def every_transformation(arch: tuple) -> list[tuple[str, dict]]:
    """Each widening (every conv, fc and dense layer) and each deepening the chain allows."""
    out: list[tuple[str, dict]] = []
    for i, u in enumerate(arch):
        if u.kind == "fc" or u.kind == "conv" and (i + 1 == len(arch) or arch[i + 1].kind != "res"):
            out.append(("wider", {"unit": i, "width": u.widths[0] + 5}))
        for j, g in enumerate(u.widths if u.kind == "dense" else ()):
            out.append(("wider", {"unit": i, "width": g + 3, "layer": j}))
        if u.kind == "dense":
            out.append(("deeper", {"after": i}))
        elif u.kind != "fc" and (i + 1 == len(arch) or arch[i + 1].kind == "fc"):
            out += [("deeper", {"after": i, "kind": "conv"}), ("deeper", {"after": i, "kind": "fc"})]
        elif not (u.kind in ("maxpool", "avgpool") and arch[i - 1].kind == "dense"):
            out.append(("deeper", {"after": i}))
            if u.kind != "fc":
                out.append(("deeper", {"after": i, "kind": "res"}))
    return out


@pytest.mark.parametrize("style,text", [("plain", PLAIN), ("dense", DENSE), ("plain", RESIDUAL)])
def test_every_transformation_keeps_the_output(style: str, text: str, images: torch.Tensor) -> None:
    space = ChainSpace(style=style)
    arch, net = trained_like(space, text, images)
    with torch.no_grad():
        before = net(images)
        done = set()
        for name, kwargs in every_transformation(arch):
            new_arch, grown = (wider if name == "wider" else deeper)(space, arch, net, **kwargs)
            assert not grown.training
            assert (grown(images) - before).abs().max().item() <= 1e-5, (name, kwargs)
            assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in net.parameters())
            done.add(space.to_string(new_arch))
            assert torch.equal(net(images), before)  # the given network is left as it was
    kinds = {u.kind for u in arch}
    assert len(done) >= 6 and ("dense" in kinds) == (style == "dense")


def test_a_sequence_of_transformations_composes(images: torch.Tensor) -> None:
    space = ChainSpace()
    arch, net = trained_like(space, "c3-8,p,c3-16", images)
    with torch.no_grad():
        before = net(images)
        arch, net = deeper(space, arch, net, after=1)
        arch, net = wider(space, arch, net, unit=2, width=12, seed=3)
        arch, net = deeper(space, arch, net, after=3, kind="fc")
        arch, net = wider(space, arch, net, unit=4, width=24)
        assert space.to_string(arch) == "c3-8,p,c3-12,c3-16,f-24"
        assert (net(images) - before).abs().max().item() <= 1e-5


def test_wider_copies_units_and_splits_their_consumers(images: torch.Tensor) -> None:
    space = ChainSpace()
    arch, net = trained_like(space, "c3-4,c3-4", images)
    new_arch, grown = wider(space, arch, net, unit=0, width=6, seed=0)
    w_old, w_new = net.units[0].conv.weight, grown.units[0].conv.weight
    copies = [next(k for k in range(4) if torch.equal(w_new[c], w_old[k])) for c in range(6)]
    assert copies[:4] == [0, 1, 2, 3]
    consumer = grown.units[1].conv.weight
    for c in range(6):
        share = copies.count(copies[c])
        torch.testing.assert_close(consumer[:, c], net.units[1].conv.weight[:, copies[c]] / share)


def test_noise_breaks_symmetry_and_exactness(images: torch.Tensor) -> None:
    space = ChainSpace()
    arch, net = trained_like(space, "c3-8,p,c3-8", images)
    _, grown = wider(space, arch, net, unit=0, width=12, noise=0.1)
    w = grown.units[0].conv.weight
    assert all(not torch.equal(w[c], w[k]) for c in range(8, 12) for k in range(8))
    with torch.no_grad():
        assert (grown(images) - net(images)).abs().max().item() > 1e-5


def test_transformations_reject_what_would_change_the_function(images: torch.Tensor) -> None:
    space = ChainSpace(style="dense")
    arch, net = trained_like(space, "c3-8,d3-4.4,a,c3-8", images)
    with pytest.raises(ValueError, match="negative"):
        deeper(space, arch, net, after=2)  # average pooling of a dense block's concatenation
    with pytest.raises(ValueError, match="only it"):
        deeper(space, arch, net, after=1, kind="conv")
    arch, net = trained_like(space, DENSE, images)
    with pytest.raises(ValueError, match="cannot be widened"):
        wider(space, arch, net, unit=3, width=20)
    with pytest.raises(ValueError, match="layer="):
        wider(space, arch, net, unit=1, width=20)
    with pytest.raises(ValueError, match="above the current"):
        wider(space, arch, net, unit=0, width=8)
    with pytest.raises(ValueError, match="fc units after fc units or the last"):
        deeper(space, arch, net, after=0, kind="fc")
    arch, net = trained_like(space, RESIDUAL, images)
    with pytest.raises(ValueError, match="residual block"):
        wider(space, arch, net, unit=0, width=12)


def test_strings_round_trip_and_errors_name_the_unit() -> None:
    space = ChainSpace()
    for text in (PLAIN, DENSE, RESIDUAL, "d3-12,f-10"):
        assert space.to_string(space.from_string(text)) == text
    with pytest.raises(ArchError, match="unit 1 'x3'"):
        space.from_string("c3-8,x3")
    with pytest.raises(ArchError, match="odd"):
        space.from_string("c4-8")
    with pytest.raises(ArchError, match="unit 2 p"):
        space.from_string("c3-8,f-10,p")
    with pytest.raises(ArchError, match="starts with"):
        space.from_string("p,c3-8")
    with pytest.raises(ArchError, match="poolings"):
        space.build(space.from_string("c3-8," + ",".join("p" * 6)))


@pytest.mark.parametrize("style", ["plain", "dense"])
def test_grid_protocol(style: str) -> None:
    space = search_spaces.get("chain", style=style)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(20)]
    assert len({space.to_string(a) for a in archs}) > 15
    for arch in archs[:5]:
        assert space.from_choices(space.to_choices(arch)) == arch
        child = space.mutate(arch, rng)
        assert child != arch
        diff = [a != b for a, b in zip(space.to_choices(arch), space.to_choices(child), strict=True)]
        assert sum(diff) == 1
        assert space.encode(arch).shape == space.encode(archs[-1]).shape
    grown = space.from_string("c3-9,p,c3-16,p,c3-16")
    with pytest.raises(ArchError, match="not on the"):
        space.to_choices(grown)
    assert space.mutate(grown, rng) != grown


def test_onnx_export_matches_torch(tmp_path, images: torch.Tensor) -> None:
    space = ChainSpace(style="dense")
    arch, net = trained_like(space, DENSE, images)
    path = tmp_path / "chain.onnx"
    torch.manual_seed(0)
    space.to_onnx(arch, path)
    torch.manual_seed(0)
    fresh = space.build(arch).eval()
    got = ort.InferenceSession(str(path)).run(None, {"input": images[:4].numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, fresh(images[:4]).numpy(), atol=1e-4)
