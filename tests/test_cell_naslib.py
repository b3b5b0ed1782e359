"""NAS-Bench-101 / DARTS extras: the NASLib cells shipped for reporting (experiments/data/naslib_zc_*.csv)
are the cells NASLib names; the cell spaces search at a reduced calibration batch."""

import ast
import csv
from pathlib import Path

import numpy as np
import pytest

import search_spaces
from search_spaces.darts import OPS as DARTS_OPS
from search_spaces.darts_ops import count_params

DATA = Path(__file__).resolve().parents[1] / "experiments" / "data"
NB101_FILE, NB301_FILE = DATA / "naslib_zc_nb101.csv", DATA / "naslib_zc_nb301.csv"
NASLIB_NB101_OPS = ["input", "output", "maxpool3x3", "conv1x1-bn-relu", "conv3x3-bn-relu"]  # NASLib's indices


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def nb101_from_key(space, key: str):
    """NASLib's tuple: the flattened 7x7 matrix, then 7 op indices."""
    t = [int(v) for v in key.split()]
    return space.make(np.array(t[:49]).reshape(7, 7), [NASLIB_NB101_OPS[i] for i in t[49:]])


def darts_from_key(space, key: str):
    """NASLib's compact form: per cell 8 (input, op index) pairs."""
    cells = [[ast.literal_eval(f"({p})") for p in cell.split()] for cell in key.split(";")]
    return space.make(*[[(DARTS_OPS[o], i) for i, o in cell] for cell in cells])


@pytest.mark.parametrize("space_name, path, from_key", [("nb101", NB101_FILE, nb101_from_key),
                                                       ("darts", NB301_FILE, darts_from_key)])
def test_every_row_is_the_cell_naslib_names(space_name, path, from_key):
    space = search_spaces.get(space_name)
    table = rows(path)
    assert len(table) >= 60
    for row in table:
        assert space.from_string(row["arch"]) == from_key(space, row["naslib_key"])
        assert 80.0 < float(row["val_accuracy"]) < 95.0


def test_parameter_counts_match_naslibs_networks():
    # NB101: equal on most cells; NASLib's PyTorch port counts up to 1% more on a few (6 of the 92) whose
    # output-feeding vertices differ in width. NB301: NASLib's network counts 0.6-1.2% fewer on every cell.
    nb101 = search_spaces.get("nb101")
    diffs = []
    for row in rows(NB101_FILE)[:12]:
        ours = count_params(nb101.build(nb101.from_string(row["arch"]))) / 1e6
        diffs.append(abs(ours / float(row["naslib_params"]) - 1))
    assert max(diffs) < 0.01 and sum(d < 1e-6 for d in diffs) >= 10
    darts = search_spaces.get("darts")
    for row in rows(NB301_FILE)[:6]:
        ours = count_params(darts.build(darts.from_string(row["arch"]))) / 1e6
        assert 0.0 < ours / float(row["naslib_params"]) - 1 < 0.015


def test_naslib_file_is_an_accuracy_table(tmp_path):
    space = search_spaces.get("darts", channels=8, layers=5, accuracy_table=NB301_FILE, dataset="val_accuracy")
    first = rows(NB301_FILE)[0]
    assert space.has_oracle and space.accuracy(space.from_string(first["arch"])) == float(first["val_accuracy"])
    bad = tmp_path / "bad.csv"  # the 9 comment lines and the header, then a bad row: line 11
    bad.write_text("".join(NB301_FILE.read_text().splitlines(keepends=True)[:10]) + "nonsense,1.0\n")
    with pytest.raises(ValueError, match="line 11"):
        search_spaces.get("darts", accuracy_table=bad, dataset="val_accuracy")


@pytest.mark.parametrize("space_name", ["nb101", "darts"])
def test_search_scores_cell_spaces_at_batch_16_unless_told(space_name):
    from nas.loop import DEFAULTS, resolve_settings

    space = search_spaces.get(space_name)
    assert resolve_settings(space, dict.fromkeys(DEFAULTS))["batch_size"] == 16
    assert resolve_settings(space, {**dict.fromkeys(DEFAULTS), "batch_size": 64})["batch_size"] == 64
    assert resolve_settings(search_spaces.get("nb201"), dict.fromkeys(DEFAULTS))["batch_size"] == 64


@pytest.mark.slow
@pytest.mark.parametrize("space_name, options", [("nb101", {"channels": 8, "input_shape": (3, 16, 16)}),
                                                 ("darts", {"channels": 8, "layers": 5, "input_shape": (3, 16, 16)})])
def test_label_free_ensemble_scores_and_searches_cell_spaces(tmp_path, space_name, options):
    # What `nas score --proxies ensemble` and `nas search --objectives ensemble` do, on small networks:
    # a 64-architecture reference drawn from the space, then candidates scored against it.
    import proxies
    from nas.evaluate import Evaluator
    from nas.loop import search

    space = search_spaces.get(space_name, **options)
    batch = proxies.load_batch(None, 8, 0, space.input_shape)
    evaluate = Evaluator(space, ("ensemble", "synflow"), batch, seed=0)
    assert evaluate.ensembles["ensemble"].components == proxies.ensemble.LABEL_FREE_COMPONENTS
    arch = space.to_string(space.sample(np.random.default_rng(1)))
    first, again = evaluate(arch), evaluate(arch)
    assert first.status == "ok" and np.isfinite(first.scores["ensemble"])
    assert first.scores == again.scores
    result = search(space_name, strategy="evolution", objectives=["ensemble"], budget=10, seed=0,
                    out=tmp_path / "run", space_options=options, progress=False, plot=False, evaluate=evaluate)
    done = [c for c in result.candidates if c.status == "ok"]
    assert len(done) == 10 and all(np.isfinite(c.scores["ensemble"]) for c in done)
