"""fedsim.studies on the cases mutation testing found untested (docs/testing.md, "Surviving mutants").

Each test compares against an independent reference: the rules of the module docstring (ids, config typing,
folder claims), TOML read back with ``tomllib``, a run folder's files read back, aggregates computed by hand with
``statistics``, or the points of a toy study whose rows are a formula of the setting and the seed. The toy study
(a module written into a temporary folder) runs in milliseconds; the whole file takes a few seconds.
"""

from __future__ import annotations

import csv
import io
import json
import math
import operator
import statistics
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from fedsim import studies
from fedsim.config import ConfigError, tomllib
from fedsim.runs import RunFolderError

TOY = '''
"""A toy study: its rows are a ``formula`` of the setting and the seed, and so are its curves, over three rounds.

More text that help does not show."""
import json
from pathlib import Path
from fedsim.config import ConfigError
from fedsim.studies import Point

NAME = "toy"
DEFAULTS = {"name": "cpu", "seeds": [0, 1], "ks": [1, 2], "scale": 1.0, "run": {}}
GROUP_BY = ("k",)
CURVE_X = "round"
CPU_TIME = "instant"


def validate(cfg):
    if cfg["scale"] < 0:
        raise ConfigError("scale must be >= 0")


def points(cfg):
    return [Point.of(s, k=k) for k in cfg["ks"] for s in cfg["seeds"]]


def cost(cfg, p):
    return p["k"]


def run_point(cfg, point, folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder.parent / "order.txt"
    log.write_text((log.read_text() if log.exists() else "") + point.id + "\\n")
    k, s = point["k"], point.seed
    rows = [{"k": k, "v": cfg["scale"] * k + s, "hit": None if s == 0 else s, "tag": "x", "wall_seconds": 0.5}]
    curves = [{"k": k, "round": t, "loss": k * t + s} for t in range(3)]
    return {"rows": rows, "curves": curves}


def figures(cfg, groups, curves):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.plot([g["k"] for g in groups], [g["v"]["mean"] for g in groups])
    return {"toy_fig": fig}


def summary(cfg, groups):
    return [f"k={g['k']} v={g['v']['mean']}" for g in groups]
'''

TOY_TOML = '''name = "cpu"   # the run id
seeds = [0, 1]
ks = [1, 2]   # the grid
scale = 1.0

[run]   # a free table
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory, importable_study):
    """The toy study module (importable by name, as worker processes import a study)."""
    yield from importable_study(tmp_path_factory.mktemp("toy_pkg"), "toy_study_mk", TOY, "toy", TOY_TOML)


def _value(cfg, k, s):
    return cfg["scale"] * k + s


# --- points and configs -----------------------------------------------------------------------------------------

def test_point_id_lists_numbers_with_their_key_and_words_alone():
    """Point.of: ``key<number>`` for ints/floats, the bare word for strings and bools, ``s<seed>`` last, with "/"
    and " " replaced by "_" (the docstring's rule); point[key] reads the setting."""
    p = studies.Point.of(3, clients=64, lr=0.5, method="a b/c", flag=True)
    assert p.id == "clients64-lr0.5-a_b_c-True-s3"
    assert p.setting == (("clients", 64), ("lr", 0.5), ("method", "a b/c"), ("flag", True)) and p.seed == 3
    assert p["lr"] == 0.5 and p["method"] == "a b/c"


def test_parse_set_splits_at_the_first_equals_and_strips_bare_words():
    """parse_set: the key and a bare-word value are stripped; only the first "=" separates key and value."""
    assert studies.parse_set(" k = a=b ") == ("k", "a=b")
    assert studies.parse_set("k=  plain word ") == ("k", "plain word")
    assert studies.parse_set("k=true") == ("k", True)


def test_typed_follows_the_type_rules_of_the_defaults():
    """_typed: ints become floats (not bools), lists become tuples of the default's element type, an empty
    default list accepts any list, a dict default needs a table; the error names where and which key."""
    assert studies._typed("x", [1, 2], (0.5,), "") == (1.0, 2.0)
    assert all(type(v) is float for v in studies._typed("x", [1, 2], (0.5,), ""))
    assert studies._typed("x", ["a", 1], (), "") == ("a", 1)
    assert studies._typed("x", 3, 0.5, "") == 3.0 and type(studies._typed("x", 3, 0.5, "")) is float
    assert studies._typed("x", {"a": 1}, {}, "") == {"a": 1}
    for value, default, message in (([True], (0.5,), "--set x must be a list of float"),
                                    ([], (1,), "--set x must be a non-empty list"),
                                    ((1,), (1,), "--set x must be a non-empty list"),
                                    (True, 0.5, "--set x must be a float"),
                                    (True, 1, "--set x must be a int"),
                                    (1, {}, "--set x must be a table")):
        with pytest.raises(ConfigError) as e:
            studies._typed("x", value, default, "--set ")
        assert str(e.value).startswith(message)


def test_resolve_tables_merge_from_the_file_and_dotted_keys_nest():
    """resolve: a table in the file merges into the default table (deeply); ``--set run={...}`` replaces it;
    a dotted key creates the tables on its way; a dotted key through a non-table value is refused; the file's
    errors have no "--set " prefix and a key with no close match gets no hint."""
    defaults = {"name": "cpu", "run": {"a": {"b": 1, "c": 2}, "d": 3}}
    cfg = studies.resolve(defaults, {"run": {"a": {"b": 5}}})
    assert cfg["run"] == {"a": {"b": 5, "c": 2}, "d": 3}
    cfg = studies.resolve(defaults, {}, {"run": {"a": {"b": 5}}})
    assert cfg["run"] == {"a": {"b": 5}}
    cfg = studies.resolve(defaults, {"run.x.y.z": 7})
    assert cfg["run"]["x"] == {"y": {"z": 7}} and cfg["run"]["a"] == {"b": 1, "c": 2}
    assert defaults["run"] == {"a": {"b": 1, "c": 2}, "d": 3}
    with pytest.raises(ConfigError) as e:
        studies.resolve(defaults, {}, {"run.d.e": 1})
    assert str(e.value) == "--set run.d.e: 'd' is not a table"
    with pytest.raises(ConfigError) as e:
        studies.resolve(defaults, {"zzzzzz": 1})
    assert str(e.value) == "zzzzzz: unknown study key 'zzzzzz' (known: name, run)"
    with pytest.raises(ConfigError) as e:
        studies.resolve(defaults, {"name.q": 1})
    assert str(e.value) == "name.q: 'name' is not a table"


def test_load_config_reads_the_default_file_and_refuses_bad_files(toy, tmp_path):
    """load_config: default = configs/<NAME>.toml next to the module; a missing or non-TOML file is a ConfigError
    naming it; the study's validate runs on the resolved config."""
    assert studies.default_config(toy) == Path(toy.__file__).resolve().parent / "configs" / "toy.toml"
    cfg = studies.load_config(toy)
    assert cfg == {**toy.DEFAULTS, "seeds": (0, 1), "ks": (1, 2)}
    with pytest.raises(ConfigError) as e:
        studies.load_config(toy, tmp_path / "none.toml")
    assert str(e.value) == f"--config {tmp_path / 'none.toml'}: no such file"
    bad = tmp_path / "bad.toml"
    bad.write_text("x = = 1")
    with pytest.raises(ConfigError, match=r"--config .*bad\.toml: invalid TOML: "):
        studies.load_config(toy, bad)
    bad.write_bytes(b"name = \"\xff\"")
    with pytest.raises(ConfigError, match=r"invalid TOML"):
        studies.load_config(toy, bad)
    with pytest.raises(ConfigError, match="scale must be >= 0"):
        studies.load_config(toy, overrides={"scale": -1})
    assert studies.default_values(toy) == cfg
    own = types.SimpleNamespace(default_values=lambda: {"own": 1})
    assert studies.default_values(own) == {"own": 1}


def test_toml_text_of_every_value_kind_reads_back_with_tomllib():
    """toml_value / toml_text: bools, quoted strings, nested lists, NaN and +-inf, and nested tables read back
    (tomllib) as the same values; plain keys come before the tables."""
    values = {"b": True, "f": False, "s": 'a "q" \\ z', "l": [1, [2.5, "x"]], "t": (1, 2), "i": -3,
              "x": 1e-300, "pinf": math.inf, "ninf": -math.inf,
              "tab": {"k": 1, "sub": {"deep": "d"}}, "after": 2}
    text = studies.toml_text(values)
    back = tomllib.loads(text)
    nan = tomllib.loads(studies.toml_text({"n": math.nan}))["n"]
    assert math.isnan(nan)
    assert back == {**values, "l": [1, [2.5, "x"]], "t": [1, 2]}
    lines = text.splitlines()
    assert lines[0] == "b = true" and lines.index("after = 2") < lines.index("[tab]") < lines.index("[tab.sub]")
    assert not text.startswith("\n") and text.endswith("\n") and not text.endswith("\n\n")


def test_toml_comments_of_tables_and_hashes_inside_strings(tmp_path):
    """toml_comments: a "#" inside a string value is not a comment; a table header's comment is the table's;
    a commented-out key line and a key without a comment give nothing."""
    path = tmp_path / "c.toml"
    path.write_text('a = "x # y" # real\n# b = 1  # no\nc = [1, 2] #list\ne = "p=q"  # eq\nm = [\n  [1,\n  2]]\n'
                    '[t.u]  #  tab ] x \nv = "#" \nw=1#w\n[z]#zed\n')
    assert studies.toml_comments(path) == {"a": "real", "c": "list", "e": "eq", "t.u": "tab ] x", "t.u.w": "w",
                                           "z": "zed"}


def test_help_text_shows_the_docstring_time_keys_defaults_and_comments(toy):
    """help_text: the module docstring's first paragraph (without ``) wrapped to ``width``, CPU_TIME, every key with
    its default in TOML (an empty table as {}) and its comment from configs/<NAME>.toml in one column (a setting
    longer than width // 2 keeps its comment unaligned), and the table's note, wrapped to ``width``."""
    first = "A toy study: its rows are a formula of the setting and the seed, and so are its curves, over three rounds."
    note = "--set run.KEY or run.SECTION.KEY sets any key of the [run] table, not only those shown. [run]: a free table."
    settings = {'name = "cpu"': "the run id", "seeds = [0, 1]": "", "ks = [1, 2]": "the grid", "scale = 1.0": "",
                "run = {}": "a free table"}
    for width in (100, 20):
        lines = studies.help_text(toy, width=width).splitlines()
        top = textwrap.wrap(first, width)
        cpu = textwrap.wrap("CPU default (experiments/configs/toy.toml): instant; the full-size config: "
                            "experiments/configs/toy_full.toml.", width)
        assert lines[:len(top) + len(cpu) + 2] == [*top, "", *cpu, ""]
        at = lines.index("--set KEY=VALUE keys and their defaults (experiments/configs/toy.toml):")
        assert lines[at - 1] == ""
        col = min(max(len(s) for s, c in settings.items() if c), width // 2)
        want = [f"  {s}" + ("" if not c else f"  # {c}" if len(s) > col else " " * (col - len(s)) + f"  # {c}")
                for s, c in settings.items()]
        assert lines[at + 1:at + 1 + len(want)] == want
        assert lines[at + 1 + len(want):] == textwrap.wrap(note, width)


def test_help_text_of_a_study_without_docstring_time_comments_or_config_file(tmp_path):
    """help_text of a study with its own default_values, no docstring, no CPU_TIME and no configs/<NAME>.toml:
    no description line, "time not stated", no comments, and a table without a note."""
    (tmp_path / "bare.py").write_text("")
    study = types.SimpleNamespace(__doc__=None, __file__=str(tmp_path / "bare.py"), NAME="bare",
                                  default_values=lambda: {"a": 1, "t": {"x": "y"}})
    lines = studies.help_text(study, width=100).splitlines()
    assert lines == ["", *textwrap.wrap("CPU default (experiments/configs/bare.toml): time not stated; the full-size "
                                         "config: experiments/configs/bare_full.toml.", 100), "",
                     "--set KEY=VALUE keys and their defaults (experiments/configs/bare.toml):",
                     "  a = 1", '  t.x = "y"',
                     *textwrap.wrap("--set t.KEY or t.SECTION.KEY sets any key of the [t] table, not only those "
                                    "shown.", 100)]


# --- folders ----------------------------------------------------------------------------------------------------

def test_claim_study_folder_refuses_without_config_and_names_unset_keys(tmp_path):
    """claim_study_folder: study files without a config.toml are refused naming them; a changed config names
    each differing key (a key only on one side as "(unset)"); the same config is accepted; overwrite removes the
    study's files, the extra ones and points/, nothing else."""
    out = tmp_path / "o"
    out.mkdir()
    studies.claim_study_folder(out, 'a = 1\n')                       # empty: nothing to check
    (out / "points").mkdir()
    with pytest.raises(RunFolderError) as e:
        studies.claim_study_folder(out, 'a = 1\n')
    assert "holds study files (points/) but no readable config.toml" in str(e.value)
    (out / "metrics.csv").write_text("x")
    (out / "extra.txt").write_text("x")
    with pytest.raises(RunFolderError) as e:
        studies.claim_study_folder(out, 'a = 1\n', extra=("extra.txt",))
    assert "holds study files (metrics.csv, extra.txt, points/)" in str(e.value)
    (out / "config.toml").write_text('a = 1\nb = 2\n')
    studies.claim_study_folder(out, 'b = 2\na = 1\n')
    with pytest.raises(RunFolderError) as e:
        studies.claim_study_folder(out, 'a = 3\nc = 4\n')
    assert "(a: 1 -> 3; b: 2 -> (unset); c: (unset) -> 4)" in str(e.value)
    (out / "mine.txt").write_text("keep")
    (out / "points" / "p").mkdir()
    studies.claim_study_folder(out, 'a = 3\n', overwrite=True, extra=("extra.txt",))
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_finished_result_needs_the_same_point_and_seed(tmp_path):
    """finished_result: a result.json of another point id or another seed, or unreadable JSON, is not finished."""
    p = studies.Point.of(1, k=2)
    (tmp_path / "result.json").write_text(json.dumps({"point": p.id, "seed": 1, "rows": []}))
    assert studies.finished_result(tmp_path, p) == {"point": p.id, "seed": 1, "rows": []}
    assert studies.finished_result(tmp_path, studies.Point("k2-s1", p.setting, 2)) is None
    assert studies.finished_result(tmp_path, studies.Point("other", p.setting, 1)) is None
    (tmp_path / "result.json").write_text("{not json")
    assert studies.finished_result(tmp_path, p) is None


def test_run_one_writes_rows_curves_and_the_point_then_skips_it(toy, tmp_path):
    """run_one: result.json holds the point id, setting, seed, rows (NaN included), curves and the seconds the point
    took; a finished point is not run again; a study returning a plain list of rows, or a dict without "curves",
    gets empty curves."""
    p = studies.Point.of(1, k=2)
    cfg = studies.load_config(toy)
    folder = tmp_path / "pts" / p.id
    assert studies.run_one("toy_study_mk", cfg, p, str(folder)) == p.id
    got = json.loads((folder / "result.json").read_text())
    want = toy.run_point(cfg, p, tmp_path / "ref" / p.id)
    assert {k: got[k] for k in ("point", "setting", "seed", "rows", "curves")} == \
           {"point": p.id, "setting": {"k": 2}, "seed": 1, "rows": want["rows"], "curves": want["curves"]}
    assert 0 <= got["seconds"] < 60
    assert studies.run_one("toy_study_mk", cfg, p, str(folder)) == p.id
    assert (tmp_path / "pts" / "order.txt").read_text().splitlines() == [p.id]   # ran once
    plain = types.ModuleType("toy_plain_mk")
    def slow_plain(cfg, point, folder):
        time.sleep(0.05)
        return [{"k": point["k"], "loss": math.nan}]

    plain.run_point = slow_plain
    sys.modules["toy_plain_mk"] = plain
    try:
        start = time.perf_counter()
        studies.run_one("toy_plain_mk", cfg, p, str(tmp_path / "plain"))
        took = time.perf_counter() - start
    finally:
        del sys.modules["toy_plain_mk"]
    got = json.loads((tmp_path / "plain" / "result.json").read_text())      # NaN is kept (Python's JSON reads it)
    assert got["rows"][0]["k"] == 2 and math.isnan(got["rows"][0]["loss"]) and got["curves"] == []
    assert 0.04 <= got["seconds"] <= took + 0.001
    plain.run_point = lambda cfg, point, folder: {"rows": [{"k": 1}]}       # a dict without "curves"
    sys.modules["toy_plain_mk"] = plain
    try:
        studies.run_one("toy_plain_mk", cfg, p, str(tmp_path / "dict"))
    finally:
        del sys.modules["toy_plain_mk"]
    got = json.loads((tmp_path / "dict" / "result.json").read_text())
    assert got["rows"] == [{"k": 1}] and got["curves"] == []


def test_fedsim_run_resumes_a_finished_run_and_errors_name_where(tmp_path):
    """fedsim_run: a second call on the same folder resumes from the finished run's checkpoint and returns the
    same history; a bad run config is a ConfigError prefixed by ``where`` (default "run")."""
    import experiments

    gc = experiments.study("gossip_clients")
    cfg = studies.load_config(gc, overrides={"nodes": [16], "methods": ["fedavg"], "seeds": [0], "rounds": 2,
                                             "eval_every": 1})
    values = gc.point_run(cfg, gc.points(cfg)[0])
    first = studies.fedsim_run(values, tmp_path / "r")
    assert [r["round"] for r in first if "global_acc" in r][-1] == 2
    assert studies.fedsim_run(values, tmp_path / "r") == first
    bad = {**values, "nonsense_key": 1}
    for call, prefix in ((lambda: studies.run_config(bad), "run: "), (lambda: studies.run_config(bad, "w"), "w: "),
                         (lambda: studies.fedsim_run(bad, tmp_path / "b"), "run: "),
                         (lambda: studies.fedsim_run(bad, tmp_path / "b", "[run] x"), "[run] x: ")):
        with pytest.raises(ConfigError) as e:
            call()
        assert str(e.value).startswith(prefix) and "nonsense_key" in str(e.value)


def test_map_tasks_serially_and_in_worker_processes_gives_every_result():
    """map_tasks: fn(*task) for every task, serially in order; in 2 spawned workers every result once."""
    tasks = [(i, 10) for i in range(4)]
    want = [operator.add(*t) for t in tasks]
    assert list(studies.map_tasks(operator.add, tasks, workers=1, progress=False)) == want
    assert list(studies.map_tasks(operator.add, tasks[:1], workers=3, progress=False)) == want[:1]
    assert sorted(studies.map_tasks(operator.add, tasks, workers=2, progress=False)) == want


# --- aggregating ------------------------------------------------------------------------------------------------

def test_series_and_first_reaching_against_the_history():
    """series keeps the rounds with a finite number (not NaN, inf, missing or a string); first_reaching is the
    first round whose value is >= the target."""
    history = [{"round": 0, "acc": 0.1}, {"round": 1}, {"round": 2, "acc": math.nan}, {"round": 3, "acc": 1},
               {"round": 4, "acc": math.inf}, {"round": 5, "acc": "x"}, {"round": 6, "acc": 0.5}]
    rounds, values = studies.series(history, "acc")
    assert (rounds, values) == ([0, 3, 6], [0.1, 1.0, 0.5]) and type(values[1]) is float
    assert studies.first_reaching(rounds, values, 0.5) == 3
    assert studies.first_reaching(rounds, values, 1.0) == 3
    assert studies.first_reaching([0, 1], [0.2, 0.6], 0.6) == 1
    assert studies.first_reaching(rounds, values, 2.0) is None


def test_spread_and_aggregate_leave_out_bools_strings_and_infinities():
    """spread counts only finite non-bool numbers in n (all values in "of"); aggregate keeps the first-seen group
    order, makes no metric of a key holding a bool or a string, and a key missing from a row counts as None."""
    assert studies.spread([1, True, math.inf, -math.inf, None, 3]) == \
           {"mean": 2.0, "std": statistics.stdev([1, 3]), "min": 1.0, "max": 3.0, "n": 2, "of": 6}
    assert studies.spread([]) == {"mean": None, "std": None, "min": None, "max": None, "n": 0, "of": 0}
    rows = [{"g": "b", "seed": 0, "v": 1, "flag": True, "word": "w"},
            {"g": "a", "seed": 0, "v": 5, "flag": 1, "extra": 2.0},
            {"g": "b", "seed": 1, "v": 3, "flag": 2, "word": "w"}]
    groups = studies.aggregate(rows, ("g",))
    assert [g["g"] for g in groups] == ["b", "a"] and [g["seeds"] for g in groups] == [2, 1]
    assert set(groups[0]) == {"g", "seeds", "v"}
    assert groups[0]["v"] == studies.spread([1, 3])
    assert groups[1]["extra"] == studies.spread([2.0]) and groups[1]["flag"] == studies.spread([1])
    both = studies.aggregate([{"g": 1, "x": 1.0}, {"g": 1, "y": 2.0}], ("g",))[0]
    assert both["x"] == {**studies.spread([1.0]), "of": 2} and both["y"]["of"] == 2


def test_flat_group_without_time_and_csv_text_read_back():
    """flat_group names each spread ``<metric>_<stat>``; without_time drops the keys holding "seconds";
    csv_text writes None as "" and a key missing from a row as "", with the columns in first-seen order."""
    g = {"k": 1, "seeds": 2, "v": {"mean": 1.5, "n": 2}, "wall_seconds": {"mean": 0.1}}
    assert studies.flat_group(g) == {"k": 1, "seeds": 2, "v_mean": 1.5, "v_n": 2, "wall_seconds_mean": 0.1}
    assert studies.without_time([g, {"seconds": 1, "a": 2}]) == [{k: v for k, v in g.items() if k != "wall_seconds"},
                                                               {"a": 2}]
    text = studies.csv_text([{"a": 1, "b": None}, {"c": "x", "a": 2}])
    assert list(csv.reader(io.StringIO(text))) == [["a", "b", "c"], ["1", "", ""], ["2", "", "x"]]


# --- figures ----------------------------------------------------------------------------------------------------

def _group(s, x, values):
    return {"s": s, "x": x, "y": studies.spread(values)}


@pytest.mark.parametrize("band", ["minmax", "std"])
def test_band_plot_draws_the_mean_and_its_band_per_series(band):
    """band_plot: one line per series (first-seen order) through the means sorted by x, labelled (labels or
    str), with distinct markers and dashes, a band of the line's colour from min to max or mean +- std, a grid;
    a group without a mean or without the metric and a series without any are left out (the next series
    is still drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [_group("b", 2, [1.0, 3.0, 5.0]), _group("b", 1, [0.0, 2.0]), _group("b", 3, [None]),
              _group("a", 1, [4.0]), _group(7, 1, [None]), _group("c", 0, [1.0]), {"s": "b", "x": 4}]
    fig, ax = plt.subplots()
    studies.band_plot(ax, groups, "x", "y", "s", labels={"a": "label a"}, band=band)
    lines, bands = ax.get_lines(), ax.collections
    assert [ln.get_label() for ln in lines] == ["b", "label a", "c"]
    markers, dashes = [ln.get_marker() for ln in lines], [ln.get_linestyle() for ln in lines]
    assert len(set(markers)) == len(set(dashes)) == 3 and "None" not in markers and "None" not in dashes
    assert list(lines[0].get_xdata()) == [1, 2] and list(lines[0].get_ydata()) == [1.0, 3.0]
    assert list(lines[2].get_xdata()) == [0] and list(lines[2].get_ydata()) == [1.0]
    s1, s2 = statistics.stdev([0.0, 2.0]), 2.0
    lo, hi = ([1 - s1, 3 - s2], [1 + s1, 3 + s2]) if band == "std" else ([0.0, 1.0], [2.0, 5.0])
    verts = bands[0].get_paths()[0].vertices
    for x, low, high in zip([1, 2], lo, hi):
        ys = verts[verts[:, 0] == x][:, 1]
        assert min(ys) == pytest.approx(low, abs=1e-12) and max(ys) == pytest.approx(high, abs=1e-12)
    assert len(bands) == 3 and all(b.get_facecolor()[0][:3].tolist() == list(matplotlib.colors.to_rgb(ln.get_color()))
                                   for b, ln in zip(bands, lines))
    assert all(g.get_visible() for g in ax.get_xgridlines())
    plt.close(fig)


def test_band_plot_tells_eight_series_apart():
    """band_plot with 8 series: every line gets a marker and a dash, and no two lines the same pair of them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    studies.band_plot(ax, [_group(f"s{i}", 0, [float(i)]) for i in range(8)], "x", "y", "s")
    pairs = [(ln.get_marker(), ln.get_linestyle()) for ln in ax.get_lines()]
    assert len(pairs) == len(set(pairs)) == 8 and not any("None" in p for p in pairs)
    plt.close(fig)


def test_save_figures_writes_png_and_svg_and_closes(tmp_path):
    """save_figures: ``<name>.png`` (a PNG file) and ``<name>.svg`` per figure, paths returned; the saved figures
    are closed, and only they (not the current figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {"f": plt.figure(), "g": plt.figure()}
    other = plt.figure()                                   # the current figure, not the study's
    paths = studies.save_figures(tmp_path, figs)
    assert paths == [tmp_path / "f.png", tmp_path / "f.svg", tmp_path / "g.png", tmp_path / "g.svg"]
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "f.svg").read_text()
    assert not any(plt.fignum_exists(f.number) for f in figs.values()) and plt.fignum_exists(other.number)
    plt.close(other)


# --- the whole study --------------------------------------------------------------------------------------------

def test_run_study_of_the_toy_study_writes_what_the_points_give(toy, tmp_path, monkeypatch, capsys):
    """run_study on the toy study: the default folder results/<NAME>/<name>, the costliest points first, the
    rows and curves (with their seeds) aggregated by hand in metrics.json, metrics.csv, points.csv and
    curves.csv read back, the summary, the figures, and ran/total."""
    monkeypatch.chdir(tmp_path)
    run = studies.run_study(toy, overrides={"ks": [1, 3], "seeds": [0, 2], "scale": 2}, progress=False,
                            results="res")
    out = Path("res") / "toy" / "cpu"
    assert run.out == out and (run.ran, run.total) == (4, 4)
    assert (out / "points" / "order.txt").read_text().split() == ["k3-s0", "k3-s2", "k1-s0", "k1-s2"]
    cfg = run.config
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["study"] == "toy" and metrics["run"] == "cpu" and metrics["group_by"] == ["k"]
    assert metrics["config"] == json.loads(json.dumps(cfg))
    want_rows = [{"k": k, "v": _value(cfg, k, s), "hit": None if s == 0 else s, "tag": "x", "wall_seconds": 0.5,
                  "seed": s} for k in (1, 3) for s in (0, 2)]
    assert metrics["points"] == want_rows == run.rows
    for g, k in zip(metrics["groups"], (1, 3)):
        vs = [_value(cfg, k, s) for s in (0, 2)]
        assert g["k"] == k and g["seeds"] == 2
        assert g["v"] == {"mean": statistics.fmean(vs), "std": statistics.stdev(vs), "min": min(vs), "max": max(vs),
                          "n": 2, "of": 2}
        assert g["hit"] == {"mean": 2.0, "std": 0.0, "min": 2.0, "max": 2.0, "n": 1, "of": 2}
        assert "tag" not in g
    assert metrics["summary"] == [f"k={g['k']} v={g['v']['mean']}" for g in metrics["groups"]]
    curves = {(c["k"], c["round"]): c["loss"] for c in metrics["curves"]}
    assert curves == {(k, t): studies.spread([k * t + s for s in (0, 2)]) for k in (1, 3) for t in range(3)}
    with open(out / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["k"], float(r["v_mean"]), r["hit_n"]) for r in table] == \
           [(str(k), statistics.fmean(_value(cfg, k, s) for s in (0, 2)), "1") for k in (1, 3)]
    with open(out / "points.csv") as f:
        points = list(csv.DictReader(f))
    assert [(r["seed"], r["hit"]) for r in points] == [("0", ""), ("2", "2"), ("0", ""), ("2", "2")]
    with open(out / "curves.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    assert run.figures == [out / "toy_fig.png", out / "toy_fig.svg"] and all(p.is_file() for p in run.figures)
    assert studies.load_results("toy", "cpu", results="res") == metrics
    assert tomllib.loads((out / "config.toml").read_text()) == json.loads(json.dumps(cfg))
    again = studies.run_study(toy, overrides={"ks": [1, 3], "seeds": [0, 2], "scale": 2}, progress=False,
                              results="res")
    assert again.ran == 0 and again.groups == run.groups
    assert capsys.readouterr().err == ""                                   # progress=False: no bar


def test_run_study_defaults_to_results_folder_and_a_progress_bar(toy, tmp_path, monkeypatch, capsys):
    """run_study's defaults: out = results/<NAME>/<name> under the working directory, and a progress bar on
    stderr named after the study that counts every point."""
    monkeypatch.chdir(tmp_path)
    run = studies.run_study(toy, overrides={"ks": [1], "seeds": [0, 1]})
    assert run.out == Path("results") / "toy" / "cpu" and (run.out / "metrics.json").is_file()
    err = capsys.readouterr().err
    assert "toy" in err and "2/2" in err


def test_run_study_refuses_before_writing(toy, tmp_path, monkeypatch):
    """run_study: workers < 1, a grid repeating a point and a failing check_inputs are refused before the folder
    is written; finish_study alone reports no point run; a point without a result is a RunFolderError naming it."""
    with pytest.raises(ConfigError, match="--workers must be >= 1, got 0"):
        studies.run_study(toy, out=tmp_path / "w", workers=0, progress=False)
    with pytest.raises(ConfigError, match="repeats a point"):
        studies.run_study(toy, overrides={"ks": [1, 1]}, out=tmp_path / "d", progress=False)

    def no_data(cfg):
        raise ConfigError("no data")

    monkeypatch.setattr(toy, "check_inputs", no_data, raising=False)
    with pytest.raises(ConfigError, match="no data"):
        studies.run_study(toy, out=tmp_path / "c", progress=False)
    assert not any((tmp_path / n).exists() for n in ("w", "d", "c"))
    monkeypatch.delattr(toy, "check_inputs")
    run = studies.run_study(toy, overrides={"ks": [1]}, out=tmp_path / "r", progress=False)
    again = studies.finish_study(toy, run.config, toy.points(run.config), run.out)
    assert again.ran == 0 and again.groups == run.groups                   # nothing ran in finish_study
    missing = studies.Point.of(5, k=1)
    with pytest.raises(RunFolderError) as e:
        studies.finish_study(toy, run.config, [*toy.points(run.config), missing], run.out)
    assert str(e.value) == f"point k1-s5 has no result in {run.out / 'points' / 'k1-s5'}; run the study again"


def test_finite_turns_nan_and_inf_into_none_in_nested_values():
    """_finite: NaN and +-inf become None inside dicts, lists and tuples; other values are kept."""
    assert studies._finite({"a": [math.nan, (math.inf, 1.5)], "b": {"c": -math.inf, "d": "x"}, "e": 2}) == \
           {"a": [None, [None, 1.5]], "b": {"c": None, "d": "x"}, "e": 2}


# --- Ray (a stand-in module: the real one takes seconds to start) ------------------------------------------------

class FakeRay:
    """Enough of Ray's API for ``_ray_map``: tasks run when their result is fetched; calls are recorded."""

    def __init__(self, initialized=False):
        self.initialized, self.log, self.cancelled = initialized, [], []

    def is_initialized(self):
        return self.initialized

    def init(self, **kwargs):
        self.log.append(("init", kwargs))
        self.initialized = True

    def shutdown(self):
        self.log.append(("shutdown",))
        self.initialized = False

    def remote(self, **options):
        def wrap(fn):
            return types.SimpleNamespace(remote=lambda *args: (fn, args))
        return wrap

    def wait(self, pending, num_returns):
        return pending[:num_returns], pending[num_returns:]

    def get(self, ref):
        fn, args = ref
        return fn(*args)

    def cancel(self, ref):
        self.cancelled.append(ref[1])


def _boom(x):
    raise ValueError(f"task {x}")


@pytest.mark.parametrize("address", ["", "local", "ray://head:10001"])
def test_ray_map_starts_ray_runs_every_task_and_shuts_down(address, monkeypatch):
    """map_tasks with ray: ``ray.init`` of a local instance for "" / "local", else of ``address``; workers get the
    folder above fedsim first on PYTHONPATH; every result is yielded; Ray is shut down when map_tasks started it."""
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    tasks = [(i, 5) for i in range(3)]
    got = list(studies.map_tasks(operator.mul, tasks, ray=address, progress=False))
    assert got == [operator.mul(*t) for t in tasks]
    (kind, kwargs), last = fake.log
    assert kind == "init" and last == ("shutdown",)
    assert kwargs.get("address") == (None if address in ("", "local") else address)
    assert ("num_cpus" in kwargs) == (address in ("", "local"))
    root = str(Path(studies.__file__).resolve().parents[1])
    import os

    assert kwargs["runtime_env"]["env_vars"]["PYTHONPATH"] == os.pathsep.join([root, "/elsewhere"])


def test_ray_map_uses_a_running_ray_cancels_on_error_and_needs_ray(monkeypatch):
    """map_tasks with ray: an already initialised Ray is used as is (neither started nor shut down); a failing
    task's error is raised and the tasks still pending are cancelled; without Ray installed a ConfigError."""
    fake = FakeRay(initialized=True)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    assert list(studies.map_tasks(operator.neg, [(1,), (2,)], ray="", progress=False)) == [-1, -2]
    assert fake.log == []
    with pytest.raises(ValueError, match="task 0"):
        list(studies.map_tasks(_boom, [(0,), (1,), (2,)], ray="", progress=False))
    assert fake.cancelled == [(1,), (2,)] and fake.log == []
    fresh = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fresh)
    with pytest.raises(ValueError):
        list(studies.map_tasks(_boom, [(0,)], ray="", progress=False))
    assert fresh.log[-1] == ("shutdown",)
    assert fresh.log[0][1]["runtime_env"]["env_vars"]["PYTHONPATH"] == str(Path(studies.__file__).resolve().parents[1])
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match="--ray needs Ray"):
        list(studies.map_tasks(operator.neg, [(1,)], ray="", progress=False))


def test_run_study_with_ray_runs_its_points_as_ray_tasks(toy, tmp_path, monkeypatch):
    """run_study(ray=...) hands the points to Ray (here the stand-in, which runs them in this process): Ray is
    started and shut down, and the results are those of a serial run."""
    serial = studies.run_study(toy, overrides={"ks": [1, 2]}, out=tmp_path / "serial", progress=False)
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    remote = studies.run_study(toy, overrides={"ks": [1, 2]}, out=tmp_path / "ray", progress=False, ray="local")
    assert [entry[0] for entry in fake.log] == ["init", "shutdown"]
    assert studies.without_time(remote.rows) == studies.without_time(serial.rows) and remote.ran == 4


def test_toml_comments_skip_the_lines_of_a_multi_line_array(tmp_path):
    """A row of a multi-line array that starts with "[" is a value, not a table header: the keys after the array
    keep their own comments (tomllib reads the same file as the reference for what is a key)."""
    import tomllib

    from fedsim.studies import toml_comments

    path = tmp_path / "c.toml"
    path.write_text('grid = [   # the sizes\n  [1, 2],  # first\n  [3, 4],\n]\nk = 3  # kay\n\n[run]\nseed = 1  # s\n')
    assert tomllib.loads(path.read_text()) == {"grid": [[1, 2], [3, 4]], "k": 3, "run": {"seed": 1}}
    assert toml_comments(path) == {"grid": "the sizes", "k": "kay", "run.seed": "s"}
