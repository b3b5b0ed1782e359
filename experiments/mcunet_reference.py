"""MCUNet's model-zoo networks rebuilt in the ``mcunet`` space, against the published numbers (issue 24, must-show 1).

For ``mbv2-w0.35-r144`` (``backbone=mbv2``) and the MCUNet models (``backbone=tinynas``) it prints the
parameters (``sum(p.numel())`` of the PyTorch network, BatchNorm included), the MACs (the ``flops`` proxy:
multiply-accumulates of convolution and linear layers for one image, not 2x FLOPs), and from
``hardware_models.memory`` the int8 flash and peak SRAM, and the first stage's peak run layer by layer and
patch by patch (MCUNetV2, ``--patches`` x ``--patches`` tiles). Published: the MCUNet model zoo
(github.com/mit-han-lab/mcunet, TinyEngine on STM32F746; kB there are TinyEngine's measurements).

    python experiments/mcunet_reference.py [--patches 4] [--nets mbv2-w0.35-r144 mcunet-320kB]
"""

from __future__ import annotations

import argparse
import os

import torch

import search_spaces
from proxies import Batch, score
from search_spaces.mcunet import REFERENCES

# net: (MACs M, params M, SRAM kB, flash kB, "Act" kB, ImageNet top-1 % fp32), from the MCUNet model zoo's
# tables (SRAM and flash measured with TinyEngine; Act is the largest input + output of one layer).
PUBLISHED: dict[str, tuple[float, float, float, float, float, float]] = {
    "mbv2-w0.35-r144": (23.5, 0.75, 308, 862, 303, 49.7),
    "mbv2-w0.3-r80": (7.3, 0.63, 98, 745, 94, 39.3),
    "mcunet-5fps": (12.8, 0.64, 107, 770, 90, 51.5),
    "mcunet-256kB": (67.3, 0.73, 242, 878, 325, 60.9),
    "mcunet-320kB": (81.8, 0.74, 293, 897, 333, 62.2),
    "mcunet-512kB": (125.9, 1.73, 456, 1876, 413, 68.4),
}


def macs(net: torch.nn.Module, side: int) -> float:
    """The ``flops`` proxy of ``net`` (millions of multiply-accumulates for one ``side`` x ``side`` image)."""
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    return score(net, Batch(x, torch.zeros(2, dtype=torch.long)), ["flops"], device="cpu")["flops"]


def row(name: str, patches: int) -> dict[str, float | str | None]:
    """Measured numbers of one model-zoo network."""
    from hardware_models.memory import memory_of

    backbone = REFERENCES[name][0]
    space = search_spaces.get("mcunet", backbone=backbone)
    arch = space.reference(name)
    net = space.build(arch)
    layer = memory_of(space, arch, weight_bits=8, activation_bits=8)
    # The model zoo's "Act" column sums each layer's input and output: the schedule without TinyEngine's
    # in-place depthwise convolution.
    plain = memory_of(space, arch, weight_bits=8, activation_bits=8, inplace_depthwise=False)
    patched = memory_of(space, arch, weight_bits=8, activation_bits=8, patches=patches)
    return {"net": name, "arch": space.to_string(arch), "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
            "macs_m": macs(net, arch.r), "sram_kb": layer.sram_kb, "act_kb": plain.sram_kb, "flash_kb": layer.flash_kb,
            "stage_kb": patched.stage_kb, "patch_stage_kb": patched.patch_stage_kb,
            "reduction": patched.patch_reduction, "patched_sram_kb": patched.sram_kb,
            "peak_node": layer.peak_node, "stage_end": patched.stage_end}


def _pct(measured: float | None, published: float | None) -> str:
    if measured is None or published is None:
        return "   -  "
    return f"{100 * (measured / published - 1):+5.1f}%"


def main() -> None:
    """Print the table of measured vs published numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=4, help="patch grid of the first stage (default 4x4)")
    parser.add_argument("--nets", nargs="+", default=["mbv2-w0.35-r144", "mcunet-320kB"], choices=list(PUBLISHED))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    header = (f"{'net':<16} {'params M':>9} {'(pub)':>6} {'MACs M':>8} {'(pub)':>6} {'SRAM kB':>8} {'(pub)':>6} "
              f"{'flash kB':>9} {'(pub)':>6} {'Act kB':>7} {'(pub)':>6} | {'stage kB':>8} {'patched':>8} {'cut x':>6} {'SRAM w/ patches':>15}")
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.nets:
        r = row(name, args.patches)
        rows.append(r)
        p_macs, p_params, p_sram, p_flash, p_act, _ = PUBLISHED[name]
        print(f"{name:<16} {r['params_m']:9.3f} {p_params:6.2f} {r['macs_m']:8.2f} {p_macs:6.1f} "
              f"{r['sram_kb']:8.1f} {p_sram:6.0f} {r['flash_kb']:9.1f} {p_flash:6.0f} {r['act_kb']:7.1f} {p_act:6.0f} | "
              f"{r['stage_kb'] or 0:8.1f} {r['patch_stage_kb'] or 0:8.1f} {r['reduction'] or 0:6.2f} "
              f"{r['patched_sram_kb']:15.1f}")
        print(f"{'':<16} {_pct(r['params_m'], p_params):>16} {_pct(r['macs_m'], p_macs):>15} "
              f"{_pct(r['sram_kb'], p_sram):>15} {_pct(r['flash_kb'], p_flash):>16} {_pct(r['act_kb'], p_act):>14}")
    print()
    for r in rows:
        print(f"{r['net']}: {r['arch']}\n  SRAM peak at {r['peak_node']}; patch stage ends at {r['stage_end']}")


if __name__ == "__main__":
    main()
