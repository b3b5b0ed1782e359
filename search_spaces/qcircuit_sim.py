"""A batched state-vector simulator in torch, and the qcircuit tasks' targets and Hamiltonians.

A state of ``n`` qubits is a real tensor ``(B, 2, 2**n)``: real and imaginary parts of the amplitudes, qubit
0 the most significant bit of the basis index (PennyLane's wire order). A gate reshapes the amplitude axis
around its qubit, so it costs O(B 2**n). Two paths compute the same states: :func:`run_fast` (complex
arithmetic, all rotation matrices built at once, consecutive entanglers merged into one signed
permutation; what the proxies call) and :func:`apply` (real arithmetic, one gate at a time; what
``forward`` runs, because ONNX has no complex type and the circuit should export).

Why not PennyLane (0.45, installs cleanly from PyPI): measured on one 4-qubit, 4-layer circuit with 11
angles and 8 restarts (``experiments/qcircuit_search.py bench-sim``, a 2-core machine shared with other
jobs), one Adam step took 10 ms here (parameter-shift gradients, one batched forward; 20 ms through
autograd) against 108 ms with PennyLane's ``default.qubit`` and torch interface (broadcast over the
restarts) and 407 ms with ``lightning.qubit`` and adjoint gradients (one restart at a time). A search
optimises every candidate for hundreds of steps, so the 10x matters; the tests compare this simulator's
amplitudes with PennyLane's when it is installed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

ROTATIONS = ("i", "rx", "ry", "rz")
"""Single-qubit choices: identity or a rotation exp(-i theta P / 2) about the X, Y or Z axis."""


class Gate(NamedTuple):
    """One gate: its name (``rx``, ``ry``, ``rz``, ``cnot``, ``cz``), its qubits (control first), its angle's
    index in the parameter vector (-1 for a gate without an angle)."""

    name: str
    wires: tuple[int, ...]
    param: int = -1


def zero_state(batch: int, n_qubits: int, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> torch.Tensor:
    """``|0...0>`` repeated ``batch`` times as a ``(B, 2, 2**n)`` real tensor."""
    psi = torch.zeros(batch, 2, 2**n_qubits, dtype=dtype, device=device)
    psi[:, 0, 0] = 1.0
    return psi


def _rotate(psi: torch.Tensor, n_qubits: int, qubit: int, axis: str, theta: torch.Tensor) -> torch.Tensor:
    """Apply R_axis(theta) (theta of shape (B,)) to ``qubit``."""
    b = psi.shape[0]
    view = psi.reshape(b, 2, 2**qubit, 2, 2 ** (n_qubits - qubit - 1))
    re0, im0 = view[:, 0, :, 0], view[:, 1, :, 0]
    re1, im1 = view[:, 0, :, 1], view[:, 1, :, 1]
    c = torch.cos(theta / 2).reshape(b, 1, 1)
    s = torch.sin(theta / 2).reshape(b, 1, 1)
    if axis == "rx":  # [[c, -is], [-is, c]]
        out = ((c * re0 + s * im1, c * im0 - s * re1), (c * re1 + s * im0, c * im1 - s * re0))
    elif axis == "ry":  # [[c, -s], [s, c]]
        out = ((c * re0 - s * re1, c * im0 - s * im1), (s * re0 + c * re1, s * im0 + c * im1))
    else:  # rz: diag(e^{-i theta/2}, e^{i theta/2})
        out = ((c * re0 + s * im0, c * im0 - s * re0), (c * re1 - s * im1, c * im1 + s * re1))
    amp0 = torch.stack(out[0], 1)  # (B, 2, left, right)
    amp1 = torch.stack(out[1], 1)
    return torch.stack((amp0, amp1), 3).reshape(psi.shape)


# Cached as numpy arrays: a torch tensor made under inference_mode (the engine's degeneracy check) could
# not be reused later in a graph that autograd records.
@functools.lru_cache(maxsize=512)
def _cnot_perm(n_qubits: int, control: int, target: int) -> np.ndarray:
    idx = np.arange(2**n_qubits)
    bit_c = (idx >> (n_qubits - 1 - control)) & 1
    return np.where(bit_c == 1, idx ^ (1 << (n_qubits - 1 - target)), idx)


@functools.lru_cache(maxsize=512)
def _cz_sign(n_qubits: int, a: int, b: int) -> np.ndarray:
    idx = np.arange(2**n_qubits)
    both = ((idx >> (n_qubits - 1 - a)) & 1) & ((idx >> (n_qubits - 1 - b)) & 1)
    return 1.0 - 2.0 * both


def apply(psi: torch.Tensor, n_qubits: int, gates: Sequence[Gate], angles: torch.Tensor) -> torch.Tensor:
    """Run ``gates`` on the batch of states ``psi`` with ``angles`` of shape (B, P)."""
    for g in gates:
        if g.name in ("rx", "ry", "rz"):
            psi = _rotate(psi, n_qubits, g.wires[0], g.name, angles[:, g.param])
        elif g.name == "cnot":
            psi = psi[..., torch.from_numpy(_cnot_perm(n_qubits, *g.wires)).to(psi.device)]
        elif g.name == "cz":
            psi = psi * torch.from_numpy(_cz_sign(n_qubits, *g.wires)).to(psi.device, psi.dtype)
        else:
            raise ValueError(f"unknown gate {g.name!r}; valid: rx, ry, rz, cnot, cz")
    return psi


_AXES = {"rx": np.array([[0, -1j], [-1j, 0]]), "ry": np.array([[0, -1], [1, 0]], dtype=complex),
         "rz": np.array([[-1j, 0], [0, 1j]])}
"""-i P for P = X, Y, Z: R_P(theta) = cos(theta/2) I + sin(theta/2) (-i P)."""


def plan(n_qubits: int, gates: Sequence[Gate]) -> list[tuple[str, Any]]:
    """Steps of the fast path: ``("rot", (qubit, k))`` for the k-th rotation, ``("perm", (index, sign))`` for a
    run of consecutive CNOT/CZ gates merged into one signed permutation of the amplitudes."""
    steps: list[tuple[str, Any]] = []
    k = 0
    dim = 2**n_qubits
    for g in gates:
        if g.name in _AXES:
            steps.append(("rot", (g.wires[0], k)))
            k += 1
            continue
        if not steps or steps[-1][0] != "perm":
            steps.append(("perm", (np.arange(dim), np.ones(dim))))
        index, sign = steps[-1][1]
        # psi'[i] = sign_g[i] * psi[perm_g[i]] composed after psi[i] = sign[i] * psi0[index[i]]
        if g.name == "cnot":
            p = _cnot_perm(n_qubits, *g.wires)
            steps[-1] = ("perm", (index[p], sign[p]))
        else:
            steps[-1] = ("perm", (index, sign * _cz_sign(n_qubits, *g.wires)))
    return steps


def run_fast(n_qubits: int, gates: Sequence[Gate], steps: list[tuple[str, Any]], angles: torch.Tensor) -> torch.Tensor:
    """The states ``(B, 2, 2**n)`` of ``gates`` from ``|0...0>``, in complex arithmetic with few autograd nodes.

    All rotation matrices are built in one broadcast op and applied by one batched matmul each; merged entanglers
    are one gather and one product. About 10x faster than :func:`apply` for a search's small circuits.
    """
    b = angles.shape[0]
    cdtype = torch.complex128 if angles.dtype == torch.float64 else torch.complex64
    rot = [g for g in gates if g.name in _AXES]
    psi = torch.zeros(b, 2**n_qubits, dtype=cdtype, device=angles.device)
    psi[:, 0] = 1.0
    if rot:
        theta = angles[:, [g.param for g in rot]]
        gens = torch.from_numpy(np.stack([_AXES[g.name] for g in rot])).to(angles.device, cdtype)
        eye = torch.eye(2, dtype=cdtype, device=angles.device)
        mats = torch.cos(theta / 2)[..., None, None] * eye + torch.sin(theta / 2)[..., None, None] * gens
    for kind, arg in steps:
        if kind == "rot":
            q, k = arg
            view = psi.reshape(b, 2**q, 2, 2 ** (n_qubits - q - 1))
            psi = (mats[:, k, None] @ view).reshape(b, -1)  # (B,1,2,2) @ (B,left,2,right)
        else:
            index, sign = arg
            psi = psi[:, torch.from_numpy(index).to(psi.device)] * torch.from_numpy(sign).to(psi.device, angles.dtype)
    return torch.stack((psi.real, psi.imag), 1)


class CircuitModel(nn.Module):
    """A parameterised circuit as a module: ``states(angles)`` gives the states, ``forward`` adds its input.

    What :mod:`proxies.quantum` reads (duck-typed, no import of this module): ``n_qubits``, ``gates``,
    ``num_angles``, ``states(angles)``, ``target`` (a ``(2, 2**n)`` state), ``hamiltonian`` (a real
    symmetric ``(2**n, 2**n)`` matrix or ``None``) and ``optimiser`` (steps, restarts, learning rate).

    ``states`` runs the complex fast path (:func:`run_fast`); ``forward(x)`` runs the real-arithmetic one
    (:func:`apply`, exportable to ONNX) at the module's angles plus the first ``num_angles`` values of each
    flattened input (a data-encoding layer), returning the real and imaginary amplitudes ``(B, 2 * 2**n)``:
    so the engine's degeneracy check flags a circuit without a single rotation (its state depends on no
    angle), and the network exports to ONNX. The two paths agree to float rounding (tested).
    """

    def __init__(self, n_qubits: int, gates: Sequence[Gate], target: torch.Tensor | None = None,
                 hamiltonian: torch.Tensor | None = None, optimiser: tuple[int, int, float] = (200, 4, 0.1),
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.n_qubits = n_qubits
        self.gates = tuple(gates)
        self.num_angles = sum(g.param >= 0 for g in self.gates)
        self.optimiser = optimiser
        self._plan = plan(n_qubits, self.gates)
        self.angles = nn.Parameter(torch.rand(self.num_angles, dtype=dtype) * (2 * np.pi))
        self.register_buffer("target", ghz_state(n_qubits).to(dtype) if target is None else target.to(dtype))
        self.register_buffer("hamiltonian", None if hamiltonian is None else hamiltonian.to(dtype))

    def states(self, angles: torch.Tensor) -> torch.Tensor:
        """States ``(B, 2, 2**n)`` of the circuit run from ``|0...0>`` with ``angles`` of shape (B, P)."""
        return run_fast(self.n_qubits, self.gates, self._plan, angles)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Amplitudes ``(B, 2 * 2**n)`` at the module's angles plus the first ``num_angles`` inputs."""
        offsets = x.flatten(1)[:, : self.num_angles].to(self.angles.dtype)
        if offsets.shape[1] < self.num_angles:
            raise ValueError(f"the circuit has {self.num_angles} angles; inputs carry only {offsets.shape[1]}")
        angles = self.angles + offsets
        psi = zero_state(angles.shape[0], self.n_qubits, angles.dtype, angles.device)
        return apply(psi, self.n_qubits, self.gates, angles).flatten(1)


def ghz_state(n_qubits: int) -> torch.Tensor:
    """(|0...0> + |1...1>) / sqrt(2) as a ``(2, 2**n)`` real tensor."""
    psi = torch.zeros(2, 2**n_qubits, dtype=torch.float64)
    psi[0, 0] = psi[0, -1] = 2**-0.5
    return psi


def haar_state(n_qubits: int, seed: int) -> torch.Tensor:
    """A Haar-random state (normalised complex Gaussian vector) drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((2, 2**n_qubits))
    return torch.from_numpy(v / np.linalg.norm(v))


_PAULI = {"I": np.eye(2), "X": np.array([[0.0, 1.0], [1.0, 0.0]]), "Z": np.diag([1.0, -1.0]),
          "Y": np.array([[0.0, -1.0j], [1.0j, 0.0]])}


def pauli_matrix(terms: Sequence[tuple[float, str]]) -> torch.Tensor:
    """Real symmetric matrix of sum(c * P) for Pauli strings P (``"XIZY"``, qubit 0 first); it must be real."""
    n = len(terms[0][1])
    out = np.zeros((2**n, 2**n), dtype=complex)
    for coeff, word in terms:
        if len(word) != n or set(word) - set(_PAULI):
            raise ValueError(f"Pauli string {word!r}: need {n} letters from I, X, Y, Z")
        m = np.ones((1, 1))
        for letter in word:
            m = np.kron(m, _PAULI[letter])
        out += coeff * m
    if np.abs(out.imag).max() > 1e-12:
        raise ValueError("the Hamiltonian has an imaginary part; only real Hamiltonians are simulated")
    return torch.from_numpy(out.real.copy())


def tfim_terms(n_qubits: int, field: float = 1.0, coupling: float = 1.0) -> list[tuple[float, str]]:
    """Transverse-field Ising chain, open ends: -J sum Z_i Z_{i+1} - h sum X_i."""
    terms = []
    for i in range(n_qubits - 1):
        terms.append((-coupling, "".join("Z" if q in (i, i + 1) else "I" for q in range(n_qubits))))
    for i in range(n_qubits):
        terms.append((-field, "".join("X" if q == i else "I" for q in range(n_qubits))))
    return terms


H2_TERMS: tuple[tuple[float, str], ...] = (
    (-0.09886396933545862, "IIII"),
    (0.17119774903432972, "ZIII"), (0.17119774903432972, "IZII"),
    (-0.22278593040418432, "IIZI"), (-0.22278593040418432, "IIIZ"),
    (0.16862219158920938, "ZZII"), (0.12054482205301799, "ZIZI"), (0.165867024105892, "ZIIZ"),
    (0.165867024105892, "IZZI"), (0.12054482205301799, "IZIZ"), (0.17434844185575687, "IIZZ"),
    (0.04532220205287398, "YXXY"), (-0.04532220205287398, "YYXX"),
    (-0.04532220205287398, "XXYY"), (0.04532220205287398, "XYYX"),
)
"""H2 in STO-3G at 0.7414 Angstrom, Jordan-Wigner on 4 qubits (spin orbitals 0..3, qubit 0 first).

Source: OpenFermion's H2 STO-3G data at 0.7414 A, reproduced here with PennyLane's ``qchem.
molecular_hamiltonian`` (built-in Hartree-Fock) to 1e-8; its lowest eigenvalue is the FCI energy
-1.13727017 Ha (checked in the tests). The 0.70 A set often quoted with it (identity -0.04207898) is a
different bond length."""

H2_FCI_ENERGY = -1.1372701746609026
"""FCI ground energy (Ha) of :data:`H2_TERMS`, the lowest eigenvalue of its matrix."""


def ground_state(hamiltonian: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Lowest eigenvalue and its eigenvector (as a ``(2, 2**n)`` state) by exact diagonalisation."""
    values, vectors = torch.linalg.eigh(hamiltonian.double())
    vec = vectors[:, 0]
    return float(values[0]), torch.stack((vec, torch.zeros_like(vec)))


__all__ = [
    "H2_FCI_ENERGY", "H2_TERMS", "ROTATIONS", "CircuitModel", "Gate", "apply", "ghz_state", "ground_state",
    "haar_state", "pauli_matrix", "tfim_terms", "zero_state",
]
