"""Shared fixtures: the reference data folder beside the checkout, skipped when absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """``$ZCNAS_CACHE_DIR`` in a fresh folder for the session: the CLI caches proxy values by default, and a
    test must neither write to the user's ~/.cache nor read values an earlier run (or older code) stored."""
    old = os.environ.get("ZCNAS_CACHE_DIR")
    path = tmp_path_factory.mktemp("zcnas-cache")
    os.environ["ZCNAS_CACHE_DIR"] = str(path)  # also inherited by Ray workers and subprocesses started later
    yield path
    if old is None:
        os.environ.pop("ZCNAS_CACHE_DIR", None)
    else:
        os.environ["ZCNAS_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip on a user's clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: tiny networks run fastest so (a busy machine makes more threads
    much slower). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def images_npz(tmp_path_factory: pytest.TempPathFactory):
    """A factory of tiny image datasets in ``nas.datasets``' ``.npz`` layout: random uint8 images (seed 0,
    train drawn before test) of ``side`` pixels with the given labels; it returns the file's path."""
    def make(y_train: np.ndarray, side: int = 16, y_test: np.ndarray | None = None) -> str:
        rng = np.random.default_rng(0)
        arrays = {"x_train": rng.integers(0, 256, (len(y_train), 3, side, side), dtype=np.uint8), "y_train": y_train}
        if y_test is not None:
            arrays.update(x_test=rng.integers(0, 256, (len(y_test), 3, side, side), dtype=np.uint8), y_test=y_test)
        path = tmp_path_factory.mktemp("images") / "tiny.npz"
        np.savez(path, **arrays)
        return str(path)

    return make


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) shared by every Ray test of the session; start-up takes seconds."""
    ray = pytest.importorskip("ray")
    from nas.executors import init_ray

    owned = not ray.is_initialized()
    if owned:
        init_ray(None, 2)
    yield ray
    if owned:
        ray.shutdown()


def _check_onnx_parity(space, arch, x, path: Path, atol: float) -> np.ndarray:
    torch.manual_seed(0)
    model = space.build(arch).eval()
    with torch.no_grad():
        ref = model(x).numpy()
    torch.manual_seed(0)  # to_onnx builds its own network: the same seed gives the same weights
    sess = ort.InferenceSession(space.to_onnx(arch, path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=atol)
    return ref


@pytest.fixture
def onnx_parity(tmp_path: Path):
    """``check(space, arch, x, atol=1e-4)``: asserts the arch's ONNX export matches torch (rtol 1e-3) on
    ``x`` and returns the torch output, both networks built from the same seed."""
    return lambda space, arch, x, atol=1e-4: _check_onnx_parity(space, arch, x, tmp_path / "m.onnx", atol)


@pytest.fixture(scope="session")
def learnable_npz(tmp_path_factory: pytest.TempPathFactory):
    """A factory of learnable tiny datasets in ``nas.datasets``' ``.npz`` layout: noise images whose class (of
    10) is their brightness bucket, so a network learns it in a few epochs and accuracies mean something
    (``images_npz``' pure noise has nothing to learn); it returns the file's path."""
    def make(n_train: int = 200, n_test: int = 100, side: int = 16, seed: int = 0) -> Path:
        rng = np.random.default_rng(seed)

        def split(n: int) -> tuple[np.ndarray, np.ndarray]:
            y = np.arange(n) % 10
            x = np.clip((y * 25 + 10)[:, None, None, None] + rng.integers(-10, 11, (n, 3, side, side)), 0, 255)
            return x.astype(np.uint8), y.astype(np.int64)

        (x_train, y_train), (x_test, y_test) = split(n_train), split(n_test)
        path = tmp_path_factory.mktemp("learnable") / "bright.npz"
        np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        return path

    return make
