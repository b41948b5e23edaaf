"""Per-genre calibration on a generated miscalibrated case, its storage, ONNX export and figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import expit

from postergenre.modeling.calibration import (
    Calibration,
    compare_calibrators,
    fit_isotonic,
    fit_platt,
    fit_temperature,
)
from postergenre.modeling.metrics import expected_calibration_error as ece

N, G = 4000, 4


def generated(seed: int = 0, shift: float = 1.5):
    """True logits z from a known logistic model, labels drawn from sigmoid(z), and the logits
    of an over-confident, shifted model: z' = 3 z + shift. Returns (z', y)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.5, (N, G)) + np.array([0.0, -1.0, 0.5, -2.0])  # a different base rate per genre
    y = (rng.random((N, G)) < expit(z)).astype(int)
    return 3 * z + shift, y


@pytest.mark.parametrize("seed", [0, 1])
def test_platt_makes_a_miscalibrated_model_calibrated_on_unseen_posters(seed):
    z, y = generated(seed)
    fit, held = slice(0, N // 2), slice(N // 2, N)
    cal = fit_platt(z[fit], y[fit])
    before, after = ece(y[held], expit(z[held])), ece(y[held], cal.probabilities(z[held]))
    assert before > 0.1
    assert after < 0.03
    # It recovers the true model: a = 1/3, b = -shift/3 = -0.5
    np.testing.assert_allclose(cal.scale.numpy(), 1 / 3, atol=0.06)
    np.testing.assert_allclose(cal.bias.numpy(), -0.5, atol=0.2)
    # Same ranking within every genre (scale > 0)
    p = cal.probabilities(z[held])
    for g in range(G):
        assert (np.argsort(p[:, g], kind="stable") == np.argsort(z[held, g], kind="stable")).all()


def test_temperature_fixes_pure_overconfidence():
    z, y = generated(shift=0.0)
    cal = fit_temperature(z[: N // 2], y[: N // 2])
    assert cal.kind == "temperature" and (cal.bias == 0).all()
    np.testing.assert_allclose(cal.scale.numpy(), 1 / 3, atol=0.06)  # T = 3
    assert ece(y[N // 2:], cal.probabilities(z[N // 2:])) < 0.03


def test_identity_by_default_leaves_logits_unchanged():
    cal = Calibration(G)
    logits = torch.randn(5, G) * 10
    assert cal.kind == "identity"
    assert torch.equal(cal(logits), logits)
    np.testing.assert_allclose(cal.probabilities(logits.numpy()), expit(logits.numpy().astype(np.float64)))


def test_dict_round_trip_is_plain_json():
    z, y = generated()
    cal = fit_platt(z, y)
    d = json.loads(json.dumps(cal.to_dict()))
    assert set(d) == {"kind", "scale", "bias"} and d["kind"] == "platt"
    assert all(isinstance(v, float) for v in d["scale"] + d["bias"]) and len(d["scale"]) == G
    back = Calibration.from_dict(d)
    assert back.kind == "platt"
    assert torch.equal(back.scale, cal.scale) and torch.equal(back.bias, cal.bias)
    assert back.to_dict() == cal.to_dict()
    # It lives in the state dict too, so a saved model carries it.
    assert set(cal.state_dict()) == {"scale", "bias"}


@pytest.mark.parametrize("bad", [
    {"scale": [1.0], "bias": [0.0]},                        # no kind
    {"kind": "platt", "scale": [1.0, 1.0], "bias": [0.0]},  # lengths differ
    {"kind": "platt", "scale": [0.0], "bias": [0.0]},       # would erase the ranking
    {"kind": "platt", "scale": [-1.0], "bias": [0.0]},      # would reverse it
    {"kind": "platt", "scale": [float("nan")], "bias": [0.0]},
    {"kind": "platt", "scale": 1.0, "bias": 0.0},           # not lists
    {"kind": "isotonic", "scale": [1.0], "bias": [0.0]},    # not a kind a Calibration can be
])
def test_from_dict_rejects_malformed(bad):
    with pytest.raises(ValueError):
        Calibration.from_dict(bad)


@pytest.mark.parametrize("positives", [0, 1, 3])
def test_a_nearly_empty_genre_gets_sane_parameters(positives):
    z, y = generated()
    y[:, 3] = 0
    y[np.argsort(-z[:, 3])[:positives], 3] = 1  # the few positives ranked first: separable
    for fit in (fit_platt, fit_temperature):
        cal = fit(z, y)
        s, b = cal.scale.numpy(), cal.bias.numpy()
        assert np.isfinite(s).all() and np.isfinite(b).all()
        assert (0.01 < s).all() and (s < 10).all() and (abs(b) < 20).all()
        # The other genres are fitted as if genre 3 were not there (genres are independent).
        np.testing.assert_allclose(s[:3], fit(z[:, :3], y[:, :3]).scale.numpy(), rtol=1e-4)
    p = fit_platt(z, y).probabilities(z)[:, 3]
    assert p.mean() < 0.01  # a genre (almost) never seen gets low probabilities, not 0.5 and not NaN
    assert (np.diff(p[np.argsort(z[:, 3])]) >= 0).all()


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError):
        fit_platt(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        fit_platt(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError):
        fit_platt(np.full((3, 2), np.nan), np.zeros((3, 2)))


def test_isotonic_returns_probabilities():
    z, y = generated()
    iso = fit_isotonic(z[: N // 2], y[: N // 2])
    p = iso(z[N // 2:])
    assert p.shape == (N // 2, G) and (p >= 0).all() and (p <= 1).all()
    assert ece(y[N // 2:], p) < 0.03


def test_compare_calibrators_ranks_the_methods():
    z, y = generated()
    r = compare_calibrators(z, y, seed=0, folds=2)
    assert json.loads(json.dumps(r)) == r
    assert (r["n_posters"], r["n_genres"], r["folds"]) == (N, G, 2)
    m = r["methods"]
    assert set(m) == {"none", "temperature", "platt", "isotonic"}
    assert all(set(v) == {"ece", "brier", "bce"} for v in m.values())
    assert m["none"]["ece"] > 0.1 and m["platt"]["ece"] < 0.03
    # Temperature cannot undo the shift; Platt can, so it beats it on all three.
    for k in ("ece", "brier", "bce"):
        assert m["platt"][k] < m["temperature"][k] < m["none"][k], k
    assert compare_calibrators(z, y, seed=0, folds=2) == r  # seeded: repeatable


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, used on purpose
def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    z, y = generated()
    cal = fit_platt(z, y).eval()
    path = tmp_path / "cal.onnx"
    torch.onnx.export(cal, (torch.zeros(2, G),), str(path), dynamo=False, opset_version=17,
                      input_names=["logits"], output_names=["calibrated"],
                      dynamic_axes={"logits": {0: "batch"}, "calibrated": {0: "batch"}})
    import onnx

    graph = onnx.load(str(path)).graph
    assert sorted(n.op_type for n in graph.node) == ["Add", "Mul"]
    x = (np.random.default_rng(1).normal(0, 5, (7, G))).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"logits": x})[0]
    with torch.no_grad():
        want = cal(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_reliability_diagram_writes_a_png(tmp_path):
    from postergenre.modeling.reliability import reliability_diagram

    z, y = generated()
    out = reliability_diagram(y, expit(z), tmp_path / "sub" / "reliability.png", title="generated")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["reliability.png"]  # no temp file left behind
    # Degenerate inputs still draw: one bin used, and scores of exactly 0 and 1.
    reliability_diagram(np.zeros((3, 2)), np.zeros((3, 2)), tmp_path / "zeros.png")
    reliability_diagram(np.ones((3, 2)), np.ones((3, 2)), tmp_path / "ones.png")
