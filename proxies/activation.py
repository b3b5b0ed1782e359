"""Proxies read from the ReLU activation patterns and feature maps of the shared train-mode forward."""

from __future__ import annotations

import math

import torch

from proxies.engine import Context, proxy
from proxies.passes import unique_rows


@proxy("nwot", "NASWOT (Mellor et al. 2021): log|det K| of the ReLU activation-pattern kernel",
       needs={"relu_kernel"})
def nwot(ctx: Context) -> float:
    """log-determinant of K = C C^T + (1-C)(1-C)^T summed over the binary codes C of every ReLU,
    BatchNorm in train mode, one batch of real images (the paper's definition and hook placement)."""
    kernel = ctx.get("forward").relu_kernel
    if kernel is None:
        raise ValueError("nwot needs nn.ReLU modules; the network has none")
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign > 0 else -math.inf


@proxy("swap", "SWAP (Peng et al. 2024): number of distinct sample-wise ReLU activation patterns",
       needs={"relu_neuron_codes"})
def swap(ctx: Context) -> float:
    """Count of distinct rows of the (neurons x samples) sign matrix of every ReLU output. This is the
    un-regularised SWAP score (the paper's regularised form multiplies by a parameter-count prior)."""
    codes = ctx.get("forward").neuron_codes
    if not codes:
        raise ValueError("swap needs nn.ReLU modules; the network has none")
    return float(unique_rows(torch.cat(codes)).shape[0])


@proxy("linear_regions", "TE-NAS-style linear-region count: distinct ReLU patterns per pixel (sum of log)",
       needs={"relu_pixel_regions"})
def linear_regions(ctx: Context) -> float:
    """Sum over ReLU layers of log(number of distinct channel activation patterns among the pixels of the
    first 8 samples). Deviation: TE-NAS counts whole-network patterns of a thin copy of the network on
    tiny inputs; a proxy that knows nothing of the space cannot build that copy, and whole-network
    patterns of a real network are all distinct (the count saturates at the batch size), so we count the
    regions each layer cuts its input into, pixel by pixel."""
    counts = ctx.get("forward").pixel_regions
    if not counts:
        raise ValueError("linear_regions needs nn.ReLU modules on 4-D feature maps; the network has none")
    return float(sum(math.log(c) for c in counts))


@proxy("meco", "MeCo (Jiang et al. 2023): sum of min eigenvalues of feature-map channel correlations",
       needs={"feature_min_eig"})
def meco(ctx: Context) -> float:
    """Sum over every module with a 4-D output of the smallest eigenvalue of the Pearson correlation
    matrix between the channels of the first sample's feature map (NaN correlations set to 0)."""
    values = ctx.get("forward").feature_min_eig
    if not values:
        raise ValueError("meco needs modules with 4-D feature-map outputs; the network has none")
    return float(sum(values))
