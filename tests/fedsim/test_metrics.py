"""fedsim.metrics (per-layer weight variance, its ratio to Xavier, node accuracy summary) and the
diagnostics figure of fedsim.plots."""

import math

import pytest
import torch

from fedsim.engine import Result
from fedsim.metrics import node_accuracy_summary, weight_tensors, weight_var_ratio, weight_variance
from fedsim.models import build_model
from fedsim.plots import DIAGNOSTIC_PANELS, diagnostic_panels, diagnostics_figure, plot_diagnostics
from fedsim.rng import Streams
from fedsim.state import ParamSpec, init_population

# a toy layout: weight w [2, 2], bias b [2], weight v [1, 3]
SPEC = ParamSpec(("w", "b", "v"), ((2, 2), (2,), (1, 3)))
X = torch.tensor([
    # w: 1 2 3 4 -> mean 2.5, population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25, unbiased 5/3
    # v: 0 0 6   -> mean 2,   population variance (4 + 4 + 16) / 3 = 8,             unbiased 12
    [1.0, 2.0, 3.0, 4.0, 100.0, -100.0, 0.0, 0.0, 6.0],
    # w: all 7 -> 0; v: 1 2 3 -> population variance 2/3, unbiased 1
    [7.0, 7.0, 7.0, 7.0, 5.0, 9.0, 1.0, 2.0, 3.0],
], dtype=torch.float64)


def test_weight_tensors_are_the_matrices_in_layout_order():
    assert weight_tensors(SPEC) == {"w": slice(0, 4), "v": slice(6, 9)}


def test_weight_variance_by_hand():
    pop = weight_variance(X, SPEC)
    assert list(pop) == ["w", "v"]  # the bias is not a weight tensor
    torch.testing.assert_close(pop["w"], torch.tensor([1.25, 0.0], dtype=torch.float64), rtol=1e-15, atol=0)
    torch.testing.assert_close(pop["v"], torch.tensor([8.0, 2 / 3], dtype=torch.float64), rtol=1e-15, atol=0)
    unb = weight_variance(X, SPEC, unbiased=True)
    torch.testing.assert_close(unb["w"], torch.tensor([5 / 3, 0.0], dtype=torch.float64), rtol=1e-15, atol=0)
    torch.testing.assert_close(unb["v"], torch.tensor([12.0, 1.0], dtype=torch.float64), rtol=1e-15, atol=0)


def test_weight_var_ratio_by_hand():
    out = weight_var_ratio(X, SPEC, {"w": 0.5, "v": 4.0})
    # w: mean over nodes (1.25 + 0) / 2 = 0.625, / 0.5 = 1.25; v: (8 + 2/3) / 2 = 13/3, / 4 = 13/12
    assert list(out) == ["weight_var_ratio", "weight_var_ratio.w", "weight_var_ratio.v"]
    assert out["weight_var_ratio.w"] == pytest.approx(1.25, rel=1e-15)
    assert out["weight_var_ratio.v"] == pytest.approx(13 / 12, rel=1e-15)
    assert out["weight_var_ratio"] == pytest.approx((1.25 + 13 / 12) / 2, rel=1e-15)
    # a subset of the layers: the mean is over those
    assert weight_var_ratio(X, SPEC, {"v": 4.0}) == pytest.approx(
        {"weight_var_ratio": 13 / 12, "weight_var_ratio.v": 13 / 12}, rel=1e-15)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_weight_variance_equals_torch_var_node_by_node(dtype, rtol, unbiased):
    """All nodes at once by column slices == torch.var of each node's tensor in a loop (float32: different
    summation orders, so 1e-5 relative; float64: 1e-12)."""
    model = build_model("lenet_caffe", (1, 28, 28), 10)
    spec = ParamSpec.of(model)
    x = init_population(model, torch.arange(6), Streams(9), shared=False, dtype=dtype)
    x = x * torch.linspace(0.5, 3, 6, dtype=dtype)[:, None] + 0.1  # nodes of different scales and means
    got = weight_variance(x, spec, unbiased=unbiased)
    assert set(got) == {n for n, s in zip(spec.names, spec.shapes) if len(s) >= 2}
    for i in range(len(x)):
        views = spec.unflatten(x[i])
        for name, var in got.items():
            assert var.dtype == dtype and var.shape == (6,)
            ref = torch.var(views[name], unbiased=unbiased)
            torch.testing.assert_close(var[i], ref, rtol=rtol, atol=0)


def test_bad_populations_and_references_are_refused():
    with pytest.raises(ValueError, match=r"need a population \[N, 9\]"):
        weight_variance(X[:, :8], SPEC)
    with pytest.raises(ValueError, match=r"need a population"):
        weight_variance(X[0], SPEC)
    with pytest.raises(ValueError, match="got b"):
        weight_var_ratio(X, SPEC, {"w": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="got none"):
        weight_var_ratio(X, SPEC, {})
    with pytest.raises(ValueError, match="positive"):
        weight_var_ratio(X, SPEC, {"w": 0.0})


def test_node_accuracy_summary():
    assert node_accuracy_summary(torch.tensor([0.5, 1.0, 0.75])) == {
        "nodes_acc": 0.75, "nodes_acc_min": 0.5, "nodes_acc_max": 1.0}
    assert node_accuracy_summary(torch.tensor([0.25, 0.5]), "global") == {
        "global_acc": 0.375, "global_acc_min": 0.25, "global_acc_max": 0.5}
    assert node_accuracy_summary(torch.tensor([0.875]), "average") == {"average_acc": 0.875}
    assert node_accuracy_summary([1, 0, 0, 0]) == {"nodes_acc": 0.25, "nodes_acc_min": 0.0, "nodes_acc_max": 1.0}
    with pytest.raises(ValueError, match="no accuracies"):
        node_accuracy_summary(torch.tensor([]))


# ---- the diagnostics figure ---------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _gossip_history(rounds=6, x_key="round"):
    rows = []
    for t in range(1, rounds + 1):
        row = {x_key: t, "train_loss": 1 / t, "bytes_sent": 1000, "bytes_delivered": 900}
        if t % 2 == 0 or t == rounds:  # evaluation rounds only
            row.update({"average_acc": 0.5 + t / 20, "nodes_acc": 0.4 + t / 20, "nodes_acc_min": 0.3 + t / 20,
                        "nodes_acc_max": 0.45 + t / 20, "consensus": 2.0 ** -t,
                        "weight_var_ratio": 0.3, "weight_var_ratio.fc1.weight": 0.28,
                        "weight_var_ratio.fc2.weight": 0.32})
        rows.append(row)
    return Result(rows)


def _fedavg_history(rounds=6):
    return Result([{"round": t, "train_loss": 1 / t, "bytes_sent": 500, "global_acc": 0.6 + t / 30}
                   for t in range(1, rounds + 1)])


def _titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_diagnostics_figure_draws_one_panel_per_recorded_metric():
    titles = dict(DIAGNOSTIC_PANELS)
    fig = diagnostics_figure({"gossip": _gossip_history(), "fedavg": _fedavg_history()})
    # short titles (they fit their panels); the legend says what the line and the band are
    assert _titles(fig) == [titles[p] for p in ("accuracy", "weight_var", "consensus", "bytes")]
    acc, var, cons, sent = fig.axes
    assert len(acc.collections) == 1  # the gossip min-max band; FedAvg records no per-node spread
    assert [line.get_label() for line in acc.lines] == ["gossip: node mean", "fedavg: global model"]
    assert [c.get_label() for c in acc.collections] == ["gossip: min-max over nodes"]
    assert list(acc.lines[0].get_xdata()) == [2, 4, 6]  # evaluation rounds only
    assert var.get_yscale() == "log" and cons.get_yscale() == "log"
    xavier = [line for line in var.lines if line.get_label() == "Xavier"]
    assert len(xavier) == 1 and list(xavier[0].get_ydata()) == [1.0, 1.0] and xavier[0].get_linestyle() == "--"
    assert {line.get_label() for line in var.lines} == {"gossip: fc1.weight", "gossip: fc2.weight", "Xavier"}
    assert list(sent.lines[0].get_ydata()) == [1000 * t for t in range(1, 7)]  # cumulative
    assert list(sent.lines[1].get_ydata()) == [500 * t for t in range(1, 7)]
    assert {ax.get_xlabel() for ax in fig.axes} == {"round"}

    fedavg_only = diagnostics_figure([_fedavg_history()])
    assert _titles(fedavg_only) == [titles["accuracy"], titles["bytes"]]
    assert not fedavg_only.axes[0].collections and "min-max" not in " ".join(   # no band drawn: none promised
        t.get_text() for t in fedavg_only.axes[0].get_legend().get_texts())
    assert diagnostic_panels(Result([{"round": 1, "consensus": 0.0}])) == ["consensus"]
    # a consensus of exactly zero (one shared model, no training) cannot go on a log axis
    assert diagnostics_figure(Result([{"round": 1, "consensus": 0.0}])).axes[0].get_yscale() == "linear"


def test_diagnostics_figure_against_ticks_and_refusals():
    fig = diagnostics_figure(_gossip_history(x_key="tick"), x_label="tick", x_key="tick")
    assert {ax.get_xlabel() for ax in fig.axes} == {"tick"}
    # an async run records its ticks as rounds: labelling the axis "tick" needs no other column (docs/gossip.md)
    fig = diagnostics_figure(_gossip_history(), x_label="tick")
    assert {ax.get_xlabel() for ax in fig.axes} == {"tick"}
    with pytest.raises(KeyError, match="'tick'"):
        diagnostics_figure(_gossip_history(), x_key="tick")
    with pytest.raises(ValueError, match="none of the diagnostic metrics"):
        diagnostics_figure(Result([{"round": 1, "train_loss": 0.5}]))


def test_plot_diagnostics_writes_a_png(tmp_path):
    path = plot_diagnostics({"gossip": _gossip_history(), "fedavg": _fedavg_history()},
                            tmp_path / "sub" / "diag.png", title="vanishing variance")
    assert path == tmp_path / "sub" / "diag.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in path.parent.iterdir()] == ["diag.png"]  # no temporary file left behind
    # NaN (a metric stored as null in history.json) is skipped, not drawn
    res = _gossip_history()
    res.history[1]["consensus"] = math.nan
    assert list(diagnostics_figure(res).axes[2].lines[0].get_ydata()) == [2.0 ** -4, 2.0 ** -6]


def test_the_engine_evaluates_through_the_algorithm(make_fed, mlp, trainer):
    """simulate's evaluation rows are what algorithm.evaluate(state, fed) returns; nothing reads trainer.model."""
    from fedsim.algorithms import FedAvg
    from fedsim.engine import simulate
    from fedsim.training import evaluate

    class Probe(FedAvg):
        def evaluate(self, state, fed):
            return {"probe": 42.0, **super().evaluate(state, fed)}

    fed = make_fed(4)
    res = simulate(Probe(trainer(mlp, steps=1), clients_per_round=2), fed, 2, eval_every=1)
    assert [row["probe"] for row in res.history] == [42.0, 42.0]
    acc, loss = evaluate(mlp, res.state.params[None], fed.test_x, fed.test_y)   # independent: the model itself
    assert abs(res.history[-1]["global_acc"] - float(acc[0])) < 1e-12
    assert abs(res.history[-1]["global_loss"] - float(loss[0])) < 1e-6
