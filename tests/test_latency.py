"""Budgets in measured latency and channels allocated by measured sensitivity: the per-layer table (measured
once, cached, per thread count), its interpolation, the calibrated model of the whole network, the stage keys
(`latency`, `round_to = "auto"`, `allocation = "sensitivity"`) and their refusals. Whether a budget is met on
time is the benchmark's to say (bench/latency.py); here, what is reported and that it is consistent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from .conftest import run_cli

CONV = {"op": "Conv", "kernel": [3, 3], "stride": [1, 1], "pads": [1, 1, 1, 1], "dilation": [1, 1], "hw": [8, 8],
        "depthwise": False}


@pytest.fixture
def table_cache(tmp_path, monkeypatch):
    import otcompress.channels.latency as latency

    monkeypatch.setattr(latency, "CACHE", tmp_path / "latency")
    return tmp_path / "latency"


def test_the_layer_table_measures_once_and_every_later_run_reuses_it(table_cache):
    from otcompress.channels.latency import LayerTable

    t = LayerTable(threads=1, runs=3)
    ms = t.ms(CONV, 8, 16)
    t.save()
    assert ms > 0 and t.measured == 1 and t.path.parent == table_cache
    again = LayerTable(threads=1, runs=3)
    assert again.ms(CONV, 8, 16) == ms and again.measured == 0  # read from the cache, not timed again
    assert again.ms(CONV, 8, 8) > 0 and again.measured == 1
    assert LayerTable(threads=2, runs=3).path != t.path  # another thread count is another table


def test_interpolation_is_exact_on_the_grid_and_bilinear_between():
    from otcompress.channels.latency import GRID, _bilinear

    grid = np.array([[4.0 * i + o for o in range(len(GRID))] for i in range(len(GRID))])  # bilinear in (i, o)
    for i, fi in enumerate(GRID):
        for o, fo in enumerate(GRID):
            assert _bilinear(grid, fi, fo) == grid[i, o]
    assert _bilinear(grid, (GRID[0] + GRID[1]) / 2, (GRID[1] + GRID[2]) / 2) == pytest.approx(4 * 0.5 + 1.5)
    assert _bilinear(grid, 0.0, 0.0) == 0.0  # extrapolated below the grid, never negative


def _chain():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 4)).eval()


class FlopsTable:
    """A layer "table" whose latency is exactly the layer's FLOPs (a product of its channel counts, so bilinear
    interpolation is exact): through it the latency model must reproduce the FLOPs model to rounding."""

    def ms(self, spec, cin, cout):
        size = spec["hw"] + spec["kernel"] if spec["op"] == "Conv" else spec["lead"]
        return 2.0 * (1 if spec["op"] == "Conv" and spec["depthwise"] else cin) * cout * float(np.prod(size))

    def save(self):
        pass


def test_through_a_table_of_flops_the_latency_model_is_the_flops_model():
    from otcompress.channels.flops import FlopsModel
    from otcompress.channels.groups import GroupGraph
    from otcompress.channels.latency import LatencyModel

    model, x = _chain(), torch.zeros(1, 3, 16, 16)
    groups = GroupGraph(model, x).groups()
    lm, fm = LatencyModel(model, x, groups, FlopsTable()), FlopsModel(model, x, groups)
    assert lm.dense_ms == pytest.approx(fm.total)
    lm.calibrate([(None, 3.0)])  # one measurement: a pure scale (3 ms dense)
    rng = np.random.default_rng(0)
    for keeps in ([1.0] * len(groups), [0.5] * len(groups), *rng.uniform(0.25, 1.0, (5, len(groups))).tolist()):
        assert float(lm.ratio(keeps)) == pytest.approx(float(fm.ratio(keeps)), rel=1e-9), keeps
    assert lm.predicted_ms(None) == pytest.approx(3.0)
    lm.calibrate([(None, 3.0), ([0.5] * len(groups), 1.0)])  # two: measured = alpha * predicted + beta through both
    assert lm.predicted_ms(None) == pytest.approx(3.0) and lm.predicted_ms([0.5] * len(groups)) == pytest.approx(1.0)


def _dead_half():
    """conv2's second half of channels is read with zero weights by conv3 (and its filters are small): cutting
    them changes nothing, cutting any of conv1's does."""
    model = _chain()
    with torch.no_grad():
        model[4].weight[:, 8:] = 0.0
        model[2].weight[8:] *= 0.5
    return model


@pytest.mark.parametrize("proxy", ["mean", "regress"])
def test_sensitivity_cuts_what_does_not_matter_where_uniform_cuts_everything_alike(proxy):
    from otcompress.channels.shrink import shrink_channels

    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = {}
    for allocation in ("sensitivity", "uniform"):
        model = _dead_half()
        with torch.no_grad():
            ref = model(x)
        rec = shrink_channels(model, x[:1], "prune", flops=0.75, allocation=allocation, probe=x, proxy=proxy,
                              progress=False)
        with torch.no_grad():
            out[allocation] = ({r["group"]: r["after"] for r in rec}, float((model(x) - ref).pow(2).mean() / ref.var()))
    (sens, sens_err), (uni, uni_err) = out["sensitivity"], out["uniform"]
    assert sens["0"] == sens["4"] == 16 and sens["2"] < uni["2"], (sens, uni)  # the budget comes from the dead half
    assert uni["0"] < 16 and uni["4"] < 16  # where one sparsity for all cuts channels that matter
    assert sens_err < 1e-6 < uni_err, (sens_err, uni_err)  # so the output does not move, for the same FLOPs


def test_a_retried_target_measures_sensitivity_once(monkeypatch):
    """A latency target retried on a fresh copy of the model reuses the group errors of the first attempt (the
    memo), and gives the same allocation; without the memo every attempt measures again."""
    import copy

    from otcompress.channels import sensitivity
    from otcompress.channels.shrink import shrink_channels

    calls = []
    real = sensitivity.group_errors
    monkeypatch.setattr(sensitivity, "group_errors", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    dense = _dead_half()
    counts = []
    for memo in ({}, None):
        shared = memo
        for _ in range(2):
            rec = shrink_channels(copy.deepcopy(dense), x[:1], "prune", flops=0.75, allocation="sensitivity", probe=x,
                                  memo=shared, progress=False)
            counts.append({r["group"]: r["after"] for r in rec})
    assert len(calls) == 1 + 2 and all(c == counts[0] for c in counts), (calls, counts)


def test_the_sensitivity_proxy_charges_nothing_for_a_channel_the_kept_ones_predict():
    """fill = "regress": a cut channel that copies a kept one reads its prediction, so cutting it costs nothing
    (what repair's refit recovers); "mean" (the default) charges it, "zero" more."""
    from otcompress.channels.groups import GroupGraph
    from otcompress.channels.sensitivity import group_errors

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    with torch.no_grad():
        model[0].weight[4:] = model[0].weight[:4]  # channels 4..7 copy 0..3
        model[0].bias[4:] = model[0].bias[:4]
    x = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    groups = [g for g in GroupGraph(model, x[:1]).groups() if g.n == 8]
    scores = lambda g: torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64)  # noqa: E731 - the copies go
    err = {f: group_errors(model, groups, x, scores, levels=(0.5,), fill=f)[0][0.5] for f in ("regress", "mean", "zero")}
    assert err["regress"] < 1e-4 < 1e-2 < err["mean"] < err["zero"], err


class BumpyCost:
    """A measured-latency-like budget: each group's cost falls with its keep ratio except at 0.75, where a count
    off the kernel's channel block is slower than the whole group."""

    def ratio(self, keeps):
        per = [1.1 if k == 0.75 else k for k in keeps]
        return torch.tensor(sum(per) / len(per), dtype=torch.float64)


def test_sensitivity_steps_past_a_count_that_costs_more_than_the_one_above_it():
    from otcompress.channels.groups import GroupGraph
    from otcompress.channels.sensitivity import allocate

    model, x = _chain(), torch.zeros(1, 3, 16, 16)
    groups = GroupGraph(model, x).groups()
    levels = lambda g, p: max(1, int(round(g.n * (1 - p) / 4)) * 4)  # counts 16, 12, 8, 4  # noqa: E731
    errors = [{1.0: 0.0, 0.5: 0.1 * (i + 1), 0.25: 1.0 * (i + 1)} for i in range(len(groups))]
    counts = allocate(groups, BumpyCost(), 0.6, levels, errors)
    keeps = [c / g.n for c, g in zip(counts, groups)]
    assert float(BumpyCost().ratio(keeps)) <= 0.6, keeps  # the budget is met though 12 of 16 costs more than 16
    assert 0.75 not in keeps  # and no group is left at the slow count


SPARSITY = 'sparsity = { "conv2" = 0.25, "conv4" = 0.5 }'


def _quickstart(tmp_path, recipe, keys: str, drop_calib: bool = False):
    """The quickstart with its intrafusion stage's sparsity replaced by `keys` (TOML lines)."""
    text = recipe.read_text()
    assert SPARSITY in text
    text = text.replace(SPARSITY, keys)
    if drop_calib:  # no unlabeled images at all: neither [data] train nor the repair stage that reads them
        text = text.replace('train = "data/digits-train.npz"\n', "").replace('[[stages]]\nkind = "repair"\n', "")
    recipe.write_text(text)
    out = tmp_path / "out"
    return run_cli("run", recipe, "--out", out, "--quiet"), out


def test_a_latency_budget_reports_its_measurements_and_auto_round_to_holds(tmp_path, quickstart_copy, table_cache):
    res, out = _quickstart(tmp_path, quickstart_copy, 'latency = 0.7\nround_to = "auto"\nlatency_threads = 1\nlatency_batch = 64')
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    shrink = next(s for s in rep["stages"] if s["kind"] == "intrafusion")["details"]
    lat = shrink["latency"]
    assert lat["target"] == 0.7 and lat["threads"] == 1 and lat["batch"] == 64 and lat["dense_ms"] > 0
    assert 1 <= len(lat["attempts"]) <= 4 and all(0 < a["predicted"] <= 1 + 1e-9 and a["measured"] > 0 for a in lat["attempts"]), lat
    assert lat["ms"] == pytest.approx(lat["dense_ms"] * lat["measured"])
    assert lat["within_10_percent"] == (abs(lat["miss"]) <= 0.10)
    assert 0 < lat["floor"] < 1 and lat["floor"] <= 0.7 * 1.05  # the floor measured, and below the target met
    assert list(table_cache.glob("*.json")), "the layer table was not cached"
    r = shrink["round_to"]
    assert r in (1, 4, 8, 16)
    shrunk = [g for g in shrink["groups"] if g["after"] < g["before"]]
    assert shrunk and all(g["after"] % r == 0 for g in shrunk), (r, shrunk)


def test_a_latency_target_below_the_measured_floor_is_refused_naming_the_floor(tmp_path, quickstart_copy, table_cache):
    res, out = _quickstart(tmp_path, quickstart_copy, "latency = 0.02\nlatency_threads = 1")
    assert res.exit_code == 2 and "latency = 0.02 is below what shrinking channels reaches" in res.output, res.output
    assert "give latency >= 0." in res.output and "Traceback" not in res.output
    assert not out.exists()  # nothing written: the model is never shrunk to chance


@pytest.mark.parametrize("keys, expect", [
    ("latency = 0.7\nflops = 0.5", "give exactly one of sparsity"),
    ("latency = 1.5", "expected the fraction of the latency to keep"),
    ('flops = 0.5\nround_to = "fast"', "expected a positive integer or 'auto'"),
    ('sparsity = 0.3\nallocation = "sensitivity"', "'sensitivity' shares a flops or latency budget"),
    ('flops = 0.7\nallocation = "sensitivity"\nproxy = "median"', "proxy"),
    ('flops = 0.7\nproxy = "regress"', "allocation = 'sensitivity'"),
])
def test_bad_budget_keys_exit_2_naming_the_key(tmp_path, quickstart_copy, keys, expect):
    res, out = _quickstart(tmp_path, quickstart_copy, keys)
    assert res.exit_code == 2 and expect in res.output and "stages[1]" in res.output, res.output
    assert not out.exists()


def test_sensitivity_without_calibration_images_is_refused_before_any_work(tmp_path, quickstart_copy):
    res, out = _quickstart(tmp_path, quickstart_copy, 'flops = 0.7\nallocation = "sensitivity"', drop_calib=True)
    assert res.exit_code == 2 and "sensitivity" in res.output and "calib" in res.output, res.output
    assert not out.exists()


def test_compress_returns_the_attempt_the_latency_stage_kept(tmp_path, monkeypatch, table_cache):
    """The first attempt misses (measured by a stand-in clock), the second lands: the module compress() returns
    is the second, the one saved, not the caller's copy the first attempt shrank in place."""
    import otcompress
    import otcompress.channels.latency as latency

    calls = []

    def clock(models, example, threads=2, batch=1, **kw):
        calls.append(len(models))
        if len(models) == 3:  # calibration: dense, half, quarter
            return [10.0, 6.0, 4.0]
        return [10.0, 9.0] if sum(c == 2 for c in calls) == 1 else [10.0, 7.0]

    monkeypatch.setattr(latency, "measure_models", clock)
    out = tmp_path / "out"
    stages = [{"kind": "prune", "latency": 0.7, "latency_threads": 1}]
    small, rep = otcompress.compress(_chain(), [1, 3, 16, 16], stages, out=out)
    lat = rep["stages"][-1]["details"]["latency"]
    assert [round(a["measured"], 2) for a in lat["attempts"]] == [0.9, 0.7] and lat["measured"] == pytest.approx(0.7)
    loaded = otcompress.load(out / "compressed.safetensors", model=_chain())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(small(x), loaded(x))


@pytest.mark.parametrize("times, reach, expect", [
    ([12.0, 8.0, 6.0, 6.1], None, 8),  # unrounded slowest; 8 and 16 alike: the smaller wins
    ([6.0, 8.0, 8.0, 8.0], None, 1),  # where unrounded is fastest, no rounding
    ([9.0, 9.0, 9.0, 5.0], None, 16),
    ([12.0, 9.0, 6.0, 5.0], 0.3, 16),  # 16 of 32 channels reaches 30% of the FLOPs (27%)
    ([12.0, 9.0, 6.0, 5.0], 0.1, 8),  # but not 10%: the fastest multiple that does
])
def test_auto_round_to_takes_the_smallest_multiple_within_3_percent_of_the_fastest(monkeypatch, times, reach, expect):
    import otcompress.channels.latency as latency

    seen = []

    def clock(models, example, threads=2, batch=1, **kw):
        seen.append([sum(p.numel() for p in m.parameters()) for m in models])
        return times

    monkeypatch.setattr(latency, "measure_models", clock)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)).eval()
    dense = sum(p.numel() for p in model.parameters())
    assert latency.fast_multiple(model, torch.zeros(1, 3, 8, 8), reach=reach) == expect
    (sizes,) = seen
    assert len(sizes) == 4 and max(sizes) <= dense and min(sizes) < dense  # the four multiples, timed together


def test_the_int8_runtime_times_the_quantized_model_and_the_stage_measures_on_it(tmp_path, quickstart_copy, table_cache):
    """`latency_runtime = "onnxruntime-int8"`: what is timed is the Q/DQ model the quantize stage would ship (int8
    weights), and the stage's measurements (here the floor it refuses a target below) are of it."""
    import onnx
    from onnx import numpy_helper

    from otcompress.channels.latency import RUNTIMES, measure_models
    from otcompress.exporters.onnx import export_onnx

    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    fp32 = tmp_path / "m.onnx"
    export_onnx(model, torch.zeros(2, 3, 8, 8), fp32)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    timed = onnx.load(str(RUNTIMES["onnxruntime-int8"].prepare(fp32, x)))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in timed.graph.node}
    assert any(numpy_helper.to_array(i).dtype == np.int8 for i in timed.graph.initializer)
    assert RUNTIMES["onnxruntime"].prepare(fp32, x) == fp32
    assert all(ms > 0 for ms in measure_models([model, model], torch.zeros(1, 3, 8, 8), threads=1, batch=2, rounds=1,
                                               runtime="onnxruntime-int8"))
    res, out = _quickstart(tmp_path, quickstart_copy, 'latency = 0.02\nlatency_threads = 1\nlatency_runtime = "onnxruntime-int8"')
    assert res.exit_code == 2 and "(onnxruntime CPU, INT8, batch 1, 1 threads" in res.output, res.output
    assert not out.exists()


def test_a_tensorrt_latency_runtime_without_tensorrt_is_refused_saying_why(tmp_path, quickstart_copy, table_cache):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: the refusal this test checks cannot happen")
    except ImportError:
        pass
    original = quickstart_copy.read_text()
    res, out = _quickstart(tmp_path, quickstart_copy, 'latency = 0.7\nlatency_runtime = "tensorrt-fp16"')
    quickstart_copy.write_text(original)
    assert res.exit_code != 0 and "TensorRT is not available" in res.output and "Traceback" not in res.output, res.output
    res, _ = _quickstart(tmp_path, quickstart_copy, 'latency = 0.7\nlatency_runtime = "tensorrt"')
    assert res.exit_code == 2 and "latency_runtime" in res.output and "tensorrt-fp16" in res.output, res.output
