"""Parameterised quantum circuits (QAS): layers of single-qubit rotations and ring entanglers on n qubits.

A circuit has ``layers`` layers; each layer puts one of ``i`` (identity), ``rx``, ``ry``, ``rz`` on every
qubit (each rotation has its own trainable angle), then an entangler choice on each nearest-neighbour pair
of the ring, in ring order: ``none``, ``cnot`` (the lower-numbered ring neighbour controls), ``cnot_r``
(the other direction) or ``cz``. The canonical string writes each layer as its rotations, ``|``, then its
entanglers with explicit qubits (control first), layers joined by ``;``::

    ry,i,i,i|cnot(0,1),cnot(1,2),cnot(2,3);i,i,i,i|

is the textbook 4-qubit GHZ preparation (RY(pi/2) plays the Hadamard) followed by an empty layer.

Tasks (option ``task``): ``ghz`` and ``random_state`` (a Haar-random target drawn from ``target_seed``) score
the fidelity |<target|psi>|^2 after optimising the angles; ``tfim`` (open transverse-field Ising chain,
-sum Z_i Z_{i+1} - field * sum X_i) and ``h2`` (H2 in STO-3G at 0.7414 A, 4 qubits after Jordan-Wigner, see
:data:`search_spaces.qcircuit_sim.H2_TERMS`) score the VQE energy. The optimisation and the training-free
circuit descriptors are proxies (:mod:`proxies.quantum`); the circuit is simulated by
:mod:`search_spaces.qcircuit_sim`.

The DAG form (:meth:`QCircuitSpace.to_dag`, the protocol of :mod:`predictors.arch2vec`) has one node per
slot: ``input``, then per layer one node per qubit (its rotation, identity included) and one per ring pair
(its entangler, or a padding node without edges when the pair has none), then ``output``. An edge joins a
gate to the previous gate on each of its qubits, as the wires of the circuit diagram do. Source: Sun, Wu,
Tresp & Ma, "Quantum Architecture Search with Unsupervised Representation Learning" (2024), whose circuit
graphs likewise make gates the nodes and wires the edges.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from search_spaces import register
from search_spaces.base import ArchError, export_onnx, suggest_choices
from search_spaces.qcircuit_sim import (
    H2_TERMS,
    ROTATIONS,
    CircuitModel,
    Gate,
    ghz_state,
    ground_state,
    haar_state,
    pauli_matrix,
    tfim_terms,
)

ENTANGLERS = ("none", "cnot", "cnot_r", "cz")
"""Per ring pair (a, b): nothing, CNOT a->b, CNOT b->a, CZ."""

TASKS = ("ghz", "random_state", "tfim", "h2")
"""Targets of the ``task`` option: two state-preparation tasks (fidelity) and two VQE tasks (energy)."""

MAX_QUBITS = 10
MAX_LAYERS = 20

_GATE = re.compile(r"^(cnot|cz)\((\d+),(\d+)\)$")

IMAGE_PROXIES = (
    "flops", "synflow", "logsynflow", "snip", "grasp", "fisher", "grad_norm", "jacov", "nwot", "zen", "epe_nas",
    "l2_norm", "plain", "zico", "meco", "swap", "ntk", "linear_regions", "az_expressivity", "az_progressivity",
    "az_trainability", "hidden_cov", "head_confidence", "head_importance", "synaptic_diversity",
    "activation_distance", "embedding_jacov", "diswot", "diswot_relation", "model_kb",
)
"""Network proxies that read convolution/linear layers, ReLUs or class logits, none of which a circuit has."""


class Layer(NamedTuple):
    """One layer: a rotation per qubit (:data:`ROTATIONS`) and an entangler per ring pair (:data:`ENTANGLERS`)."""

    rotations: tuple[str, ...]
    entanglers: tuple[str, ...]


Circuit = tuple[Layer, ...]


def ring_pairs(n_qubits: int) -> list[tuple[int, int]]:
    """Nearest-neighbour pairs of the ring, in order: (0,1), (1,2), ..., (n-1,0); just (0,1) for 2 qubits."""
    return [(0, 1)] if n_qubits == 2 else [(k, (k + 1) % n_qubits) for k in range(n_qubits)]


@register("qcircuit")
class QCircuitSpace:
    """Layered parameterised circuits on ``qubits`` qubits, scored on a state-preparation or VQE task.

    Args:
        qubits: 2..10.
        layers: 1..20 layers of (rotation per qubit, entangler per ring pair).
        task: ``ghz``, ``random_state``, ``tfim`` or ``h2`` (4 qubits).
        target_seed: seed of the ``random_state`` target.
        field: transverse field of ``tfim`` (1.0: the critical point).
        steps, restarts, lr: the angle optimisation behind ``fidelity`` and ``vqe_energy`` (Adam, ``restarts``
            random starts optimised together, the best kept).

    Example:
        >>> space = QCircuitSpace(qubits=4, layers=1)
        >>> arch = space.from_string("ry,i,i,i|cnot(0,1),cnot(1,2),cnot(2,3)")
        >>> model = space.build(arch)
        >>> psi = model.states(torch.full((1, 1), torch.pi / 2))
        >>> round(float(psi[0, 0, 0] ** 2), 3), round(float(psi[0, 0, 15] ** 2), 3)
        (0.5, 0.5)
    """

    name = "qcircuit"
    description = "parameterised quantum circuits: RX/RY/RZ/I per qubit, CNOT/CZ on ring pairs, per layer (QAS)"
    input_kind = "circuit"
    num_classes = 0
    # The label-free ensemble's components: the two descriptors that rank random 4-qubit, 2-layer circuits by
    # their optimised fidelity to a Haar-random state (Spearman 0.85 and 0.62 on 200 circuits;
    # gradient_variance -0.25, so it is left out; experiments/qcircuit_search.py proxies).
    ensemble_components = ("expressibility", "entangling_capability")

    def __init__(self, qubits: int = 4, layers: int = 4, task: str = "ghz", target_seed: int = 0,
                 field: float = 1.0, steps: int = 200, restarts: int = 4, lr: float = 0.1) -> None:
        if not 2 <= int(qubits) <= MAX_QUBITS:
            raise ValueError(f"qubits={qubits}: the qcircuit space simulates 2 to {MAX_QUBITS} qubits")
        if not 1 <= int(layers) <= MAX_LAYERS:
            raise ValueError(f"layers={layers}: choose 1 to {MAX_LAYERS}")
        if task not in TASKS:
            raise ValueError(f"task={task!r}: valid tasks are {', '.join(TASKS)}")
        if task == "h2" and int(qubits) != 4:
            raise ValueError(f"task=h2 is the 4-qubit Jordan-Wigner Hamiltonian of H2; got qubits={qubits} "
                             "(use qubits=4)")
        if int(steps) < 1 or int(restarts) < 1 or float(lr) <= 0:
            raise ValueError(f"steps={steps}, restarts={restarts}, lr={lr}: need steps >= 1, restarts >= 1, lr > 0")
        self.qubits, self.layers, self.task = int(qubits), int(layers), task
        self.target_seed, self.field = int(target_seed), float(field)
        self.steps, self.restarts, self.lr = int(steps), int(restarts), float(lr)
        self.pairs = ring_pairs(self.qubits)
        self.input_shape = (1, 1, self.qubits * self.layers)  # one angle offset per rotation slot
        self._task_tensors: tuple[torch.Tensor, torch.Tensor | None] | None = None

    # --- what the search loop reads -----------------------------------------------------------------------
    @property
    def search_defaults(self) -> dict[str, Any]:
        """The task's objective; Gaussian angle offsets as data (a circuit reads no images)."""
        objective = "vqe_energy" if self.task in ("tfim", "h2") else "fidelity"
        return {"objectives": [objective], "data": "gaussian", "batch_size": 8}

    @property
    def unavailable_proxies(self) -> dict[str, str]:
        """Network proxies (no layers to read) and, on state tasks, ``vqe_energy`` (no Hamiltonian)."""
        out = {p: "it reads convolution/linear layers or logits; a circuit has none (use fidelity, vqe_energy, "
                  "expressibility, entangling_capability, gradient_variance, depth, two_qubit_gates, params)"
               for p in IMAGE_PROXIES}
        if self.task not in ("tfim", "h2"):
            out["vqe_energy"] = f"task {self.task} has no Hamiltonian; its objective is fidelity"
        return out

    @property
    def cardinality(self) -> int:
        """4 rotations per qubit and 4 entanglers per pair, per layer."""
        return (len(ROTATIONS) ** self.qubits * len(ENTANGLERS) ** len(self.pairs)) ** self.layers

    # --- sampling and variation -------------------------------------------------------------------------
    def decisions(self) -> list[tuple[str, Sequence[str]]]:
        """Per layer: a rotation per qubit, then an entangler per ring pair."""
        out: list[tuple[str, Sequence[str]]] = []
        for li in range(self.layers):
            out += [(f"l{li}_q{q}", ROTATIONS) for q in range(self.qubits)]
            out += [(f"l{li}_p{a}{b}", ENTANGLERS) for a, b in self.pairs]
        return out

    def from_choices(self, choices: Sequence[int]) -> Circuit:
        """Architecture from one option index per decision."""
        c = [int(x) for x in choices]
        per = self.qubits + len(self.pairs)
        if len(c) != per * self.layers:
            raise ArchError(f"expected {per * self.layers} choices ({self.layers} layers x {per}), got {len(c)}")
        return tuple(Layer(tuple(ROTATIONS[k] for k in c[li * per: li * per + self.qubits]),
                           tuple(ENTANGLERS[k] for k in c[li * per + self.qubits: (li + 1) * per]))
                     for li in range(self.layers))

    def to_choices(self, arch: Circuit) -> list[int]:
        """Option index per decision of ``arch``."""
        return [i for layer in arch for i in
                [ROTATIONS.index(r) for r in layer.rotations] + [ENTANGLERS.index(e) for e in layer.entanglers]]

    def sample(self, rng: np.random.Generator) -> Circuit:
        """Every decision uniform (all have 4 options)."""
        return self.from_choices(rng.integers(4, size=self.layers * (self.qubits + len(self.pairs))).tolist())

    def mutate(self, arch: Circuit, rng: np.random.Generator) -> Circuit:
        """Change one rotation or one entangler to another option."""
        choices = self.to_choices(arch)
        i = int(rng.integers(len(choices)))
        choices[i] = (choices[i] + 1 + int(rng.integers(3))) % 4  # another of the 4 options
        return self.from_choices(choices)

    def crossover(self, a: Circuit, b: Circuit, rng: np.random.Generator) -> Circuit:
        """Uniform crossover of the decisions of two parents."""
        ca, cb = self.to_choices(a), self.to_choices(b)
        return self.from_choices([x if rng.random() < 0.5 else y for x, y in zip(ca, cb, strict=True)])

    def suggest(self, trial: Any) -> Circuit:
        """Ask an Optuna trial for every decision."""
        return self.from_choices(suggest_choices(self, trial))

    def encode(self, arch: Circuit) -> np.ndarray:
        """One-hot of every decision (layers x (qubits + pairs) x 4 values)."""
        choices = self.to_choices(arch)
        out = np.zeros((len(choices), 4), dtype=np.float32)
        out[np.arange(len(choices)), choices] = 1.0
        return out.ravel()

    # --- strings ----------------------------------------------------------------------------------------
    def to_string(self, arch: Circuit) -> str:
        """``rot,rot,...|gate(a,b),...`` per layer, joined by ``;``."""
        return ";".join(",".join(layer.rotations) + "|" + ",".join(self._gate_text(k, e)
                        for k, e in enumerate(layer.entanglers) if e != "none") for layer in arch)

    def _gate_text(self, pair: int, kind: str) -> str:
        a, b = self.pairs[pair]
        return {"cnot": f"cnot({a},{b})", "cnot_r": f"cnot({b},{a})", "cz": f"cz({a},{b})"}[kind]

    def from_string(self, text: str) -> Circuit:
        """Parse the canonical form (whitespace ignored, ``cz(b,a)`` accepted for ``cz(a,b)``)."""
        parts = "".join(str(text).split()).split(";")
        if len(parts) != self.layers:
            raise ArchError(f"{len(parts)} layer(s) separated by ';', but this space has layers={self.layers} "
                            f"(an empty layer is '{','.join(['i'] * self.qubits)}|')")
        return tuple(self._parse_layer(li, part) for li, part in enumerate(parts))

    def _parse_layer(self, li: int, text: str) -> Layer:
        where = f"layer {li} ({text!r})"
        if text.count("|") != 1:
            raise ArchError(f"{where}: write the rotations, one '|', then the entanglers, e.g. "
                            f"'{','.join(['ry'] * self.qubits)}|cnot(0,1)'")
        rot_text, ent_text = text.split("|")
        rotations = tuple(rot_text.split(","))
        if len(rotations) != self.qubits:
            raise ArchError(f"{where}: {len(rotations)} rotation(s), need one per qubit ({self.qubits})")
        for q, r in enumerate(rotations):
            if r not in ROTATIONS:
                raise ArchError(f"{where}: qubit {q} rotation {r!r} is not one of {', '.join(ROTATIONS)}")
        entanglers = ["none"] * len(self.pairs)
        last = -1
        for token in filter(None, re.split(r",(?![^()]*\))", ent_text)):  # commas outside (a,b)
            pair, kind = self._parse_gate(where, token)
            if pair <= last:
                order = ", ".join(f"({a},{b})" for a, b in self.pairs)
                raise ArchError(f"{where}: entangler {token!r} is out of ring order or repeats a pair; each pair "
                                f"takes at most one gate, in the order {order}")
            entanglers[pair], last = kind, pair
        return Layer(rotations, tuple(entanglers))

    def _parse_gate(self, where: str, token: str) -> tuple[int, str]:
        m = _GATE.match(token)
        if m is None:
            raise ArchError(f"{where}: entangler {token!r} is not 'cnot(control,target)' or 'cz(a,b)'")
        kind, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        for k, pair in enumerate(self.pairs):
            if (a, b) == pair:
                return k, kind
            if (b, a) == pair:
                return k, "cnot_r" if kind == "cnot" else "cz"
        allowed = ", ".join(f"({x},{y})" for x, y in self.pairs)
        raise ArchError(f"{where}: entangler {token!r} acts on qubits {a} and {b}, which are not ring neighbours "
                        f"of the {self.qubits}-qubit ring; allowed pairs: {allowed}")

    # --- circuits ---------------------------------------------------------------------------------------
    def gates(self, arch: Circuit) -> list[Gate]:
        """The gates of ``arch`` in order (identities left out), each rotation with its own angle index."""
        out: list[Gate] = []
        for layer in arch:
            for q, r in enumerate(layer.rotations):
                if r != "i":
                    out.append(Gate(r, (q,), sum(g.param >= 0 for g in out)))
            for (a, b), e in zip(self.pairs, layer.entanglers, strict=True):
                if e == "cnot":
                    out.append(Gate("cnot", (a, b)))
                elif e == "cnot_r":
                    out.append(Gate("cnot", (b, a)))
                elif e == "cz":
                    out.append(Gate("cz", (a, b)))
        return out

    def task_tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The task's target state ``(2, 2**n)`` (a VQE task's exact ground state) and its Hamiltonian or None."""
        if self._task_tensors is None:
            hamiltonian = None
            if self.task == "ghz":
                target = ghz_state(self.qubits)
            elif self.task == "random_state":
                target = haar_state(self.qubits, self.target_seed)
            else:
                terms = H2_TERMS if self.task == "h2" else tfim_terms(self.qubits, self.field)
                hamiltonian = pauli_matrix(terms)
                target = ground_state(hamiltonian)[1]
            self._task_tensors = (target, hamiltonian)
        return self._task_tensors

    def exact_energy(self) -> float:
        """Ground energy of a VQE task's Hamiltonian by exact diagonalisation."""
        hamiltonian = self.task_tensors()[1]
        if hamiltonian is None:
            raise ValueError(f"task {self.task} has no Hamiltonian")
        return ground_state(hamiltonian)[0]

    def build(self, arch: Circuit, num_classes: int | None = None,
              input_shape: tuple[int, int, int] | None = None) -> nn.Module:
        """The circuit as a :class:`~search_spaces.qcircuit_sim.CircuitModel` carrying the task (no classifier)."""
        target, hamiltonian = self.task_tensors()
        return CircuitModel(self.qubits, self.gates(arch), target, hamiltonian,
                            optimiser=(self.steps, self.restarts, self.lr))

    def to_onnx(self, arch: Circuit, path: str | os.PathLike[str]) -> str:
        """The simulator's graph (angle offsets -> real and imaginary amplitudes) as ONNX.

        It describes the classical simulation, not a quantum device: a latency target's prediction for it
        is the simulator's cost, so rank circuits on ``depth`` and ``two_qubit_gates`` instead.
        """
        return export_onnx(self.build(arch), torch.zeros(1, *self.input_shape), path)

    # --- DAG protocol (predictors.arch2vec) --------------------------------------------------------------
    @property
    def dag_nodes(self) -> int:
        """Node count of every :meth:`to_dag` graph: input, a slot per rotation and per pair, output."""
        return 2 + self.layers * (self.qubits + len(self.pairs))

    def dag_ops(self) -> list[str]:
        """Node labels: ``input``, ``output``, ``<rotation>@q``, ``cnot@c>t``, ``cz@a-b``."""
        labels = ["input", "output"] + [f"{r}@{q}" for r in ROTATIONS for q in range(self.qubits)]
        for a, b in self.pairs:
            labels += [f"cnot@{a}>{b}", f"cnot@{b}>{a}", f"cz@{a}-{b}"]
        return labels

    def _slot_labels(self, arch: Circuit) -> list[str | None]:
        labels: list[str | None] = ["input"]
        for layer in arch:
            labels += [f"{r}@{q}" for q, r in enumerate(layer.rotations)]
            for (a, b), e in zip(self.pairs, layer.entanglers, strict=True):
                labels.append({"none": None, "cnot": f"cnot@{a}>{b}", "cnot_r": f"cnot@{b}>{a}",
                               "cz": f"cz@{a}-{b}"}[e])
        return [*labels, "output"]

    def _wires(self, label: str) -> tuple[int, ...]:
        body = label.split("@")[1]
        return tuple(int(x) for x in re.split(r"[>-]", body))

    def _adjacency(self, labels: Sequence[str | None]) -> np.ndarray:
        """Edges from each gate to the previous gate on each of its wires (``input`` starts every wire)."""
        n = len(labels)
        adj = np.zeros((n, n), dtype=np.uint8)
        last = [0] * self.qubits
        for j, label in enumerate(labels[1:-1], start=1):
            if label is None:
                continue
            for w in self._wires(label):
                adj[last[w], j] = 1
                last[w] = j
        for w in range(self.qubits):
            adj[last[w], n - 1] = 1
        return adj

    def to_dag(self, arch: Circuit) -> tuple[np.ndarray, np.ndarray]:
        """``(adjacency, ops)`` over :attr:`dag_nodes` slots; a pair without a gate is a padding node (-1)."""
        labels = self._slot_labels(arch)
        vocab = {name: i for i, name in enumerate(self.dag_ops())}
        ops = np.array([-1 if lab is None else vocab[lab] for lab in labels], dtype=np.int64)
        return self._adjacency(labels), ops

    def from_dag(self, adjacency: np.ndarray, ops: np.ndarray) -> Circuit:
        """The circuit of a :meth:`to_dag` graph; ``ArchError`` naming the slot or edge that is wrong."""
        adjacency, ops = np.asarray(adjacency), np.asarray(ops).reshape(-1)
        n = self.dag_nodes
        if adjacency.shape != (n, n) or ops.shape != (n,):
            raise ArchError(f"a qcircuit DAG here has {n} nodes: adjacency {n}x{n} and {n} ops, got "
                            f"{adjacency.shape} and {ops.shape}")
        vocab = self.dag_ops()
        names = [None if int(o) == -1 else vocab[int(o)] if 0 <= int(o) < len(vocab) else f"#{int(o)}" for o in ops]
        if names[0] != "input" or names[-1] != "output":
            raise ArchError(f"a qcircuit DAG starts with 'input' and ends with 'output'; got {names[0]!r} and "
                            f"{names[-1]!r}")
        per = self.qubits + len(self.pairs)
        layers = []
        for li in range(self.layers):
            base = 1 + li * per
            rotations = []
            for q in range(self.qubits):
                name = names[base + q]
                if name is None or "@" not in name or name.split("@")[0] not in ROTATIONS or self._wires(name) != (q,):
                    raise ArchError(f"node {base + q} (layer {li}, qubit {q}) must be a rotation on qubit {q} "
                                    f"({', '.join(f'{r}@{q}' for r in ROTATIONS)}); got {name!r}")
                rotations.append(name.split("@")[0])
            entanglers = []
            for k, (a, b) in enumerate(self.pairs):
                name = names[base + self.qubits + k]
                kinds = {None: "none", f"cnot@{a}>{b}": "cnot", f"cnot@{b}>{a}": "cnot_r", f"cz@{a}-{b}": "cz"}
                if name not in kinds:
                    raise ArchError(f"node {base + self.qubits + k} (layer {li}, pair ({a},{b})) must be padding or "
                                    f"an entangler of that pair ({', '.join(str(x) for x in kinds if x)}); got {name!r}")
                entanglers.append(kinds[name])
            layers.append(Layer(tuple(rotations), tuple(entanglers)))
        arch = tuple(layers)
        expected = self._adjacency(self._slot_labels(arch))
        given = (np.triu(adjacency, 1) != 0).astype(np.uint8)
        if not np.array_equal(given, expected):
            i, j = np.argwhere(given != expected)[0]
            state = "has" if given[i, j] else "lacks"
            raise ArchError(f"the adjacency {state} edge {i}->{j}, which the wires of these gates "
                            f"{'do not make' if given[i, j] else 'make'}")
        return arch


__all__ = ["ENTANGLERS", "TASKS", "Circuit", "Layer", "QCircuitSpace", "ring_pairs"]
