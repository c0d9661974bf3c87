"""Tests for fedsim.config: loading, validation messages, overrides and TOML round trips."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from fedsim.config import (
    AlgorithmConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    FaultsConfig,
    TopologyConfig,
    from_dict,
    load,
    replace,
    to_toml,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "experiments" / "configs"
# `fedsim run` configs; study configs (experiments/*.py) hold a [run] table of settings shared by their points
STUDY_NAMES = {"fedpca_clients", "gossip_clients", "topologies", "vanishing_variance", "leakage_defences"}
# `fedsim run` configs; the study configs (<study>.toml, <study>_full.toml) belong to `fedsim experiment`
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob("*.toml") if p.stem.removesuffix("_full") not in STUDY_NAMES)


def nested(dotted: str, value) -> dict:
    """{"a.b": v} -> {"a": {"b": v}}."""
    *path, key = dotted.split(".")
    out = {key: value}
    for part in reversed(path):
        out = {part: out}
    return out


def error_of(values: dict) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(values)
    return str(info.value)


def roundtrip(cfg: RunConfig) -> RunConfig:
    return from_dict(tomllib.loads(to_toml(cfg)))


# --------------------------------------------------------------------------- bundled configs


def test_bundled_configs_are_found():
    from experiments import STUDIES

    assert set(STUDIES) == STUDY_NAMES
    names = {p.name for p in CONFIG_FILES}
    assert {"quickstart_fedavg.toml", "quickstart_gossip.toml", "quickstart_gossip_dirichlet.toml",
            "mnist_lenet_fedavg.toml"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_bundled_config_loads_validates_and_roundtrips(path):
    cfg = load(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.validate() is cfg
    raw = tomllib.loads(path.read_text())
    # every value written in the file ends up in the config
    assert cfg.name == raw["name"]
    assert cfg.rounds == raw["rounds"] and cfg.clients == raw["clients"]
    for section in ("data", "model", "algorithm", "topology"):
        for key, value in raw.get(section, {}).items():
            got = getattr(getattr(cfg, section), key)
            assert got == (tuple(value) if isinstance(value, list) else value), f"{section}.{key}"
    assert roundtrip(cfg) == cfg
    assert load(str(path)) == cfg  # str paths work too


def test_mnist_config_values():
    cfg = load(CONFIG_DIR / "mnist_lenet_fedavg.toml")
    assert (cfg.data.dataset, cfg.data.partition, cfg.model.name) == ("mnist", "dirichlet", "lenet")
    assert cfg.algorithm.clients_per_round == 10 and cfg.clients == 20
    assert cfg.algorithm.momentum == 0.9
    # keys the file leaves out keep their defaults
    assert cfg.faults == FaultsConfig() and cfg.data.test_fraction == DataConfig().test_fraction


# --------------------------------------------------------------------------- round trips


def test_defaults_validate_and_roundtrip():
    cfg = RunConfig()
    assert cfg.validate() is cfg
    assert from_dict({}) == cfg
    assert roundtrip(cfg) == cfg


def test_roundtrip_of_non_default_values():
    cfg = RunConfig(
        name='odd "name" with \\ backslash and tab\t', seed=7, rounds=3, clients=6, device="cuda:1",
        threads=2, eval_every=5, checkpoint_every=0, vectorized=False,
        data=DataConfig(dataset="mnist", dir="C:\\data\\x", test_fraction=0.25, partition="sampled",
                        alpha=1e-3, per_client=5),
        model=ModelConfig(name="mlp", hidden=(64, 32, 16)),
        algorithm=AlgorithmConfig(name="gossip", lr=0.30000000000000004, momentum=0.5, weight_decay=1e-4,
                                  local_steps=3, batch_size=8, active_fraction=0.5, same_init=False,
                                  momentum_buffer="reset"),
        topology=TopologyConfig(name="watts_strogatz", k=2, p=0.25, m=3, path="edges.txt", mixing="uniform",
                                schedule="static"),
        faults=FaultsConfig(loss=1.0),
    ).validate()
    back = roundtrip(cfg)
    assert back == cfg
    assert isinstance(back.model.hidden, tuple)
    # the settings of FedAvg and of the failures schedule that gossip on a static graph refuses
    fl = RunConfig(clients=6, algorithm=AlgorithmConfig(weighted=False, clients_per_round=4)).validate()
    failures = RunConfig(algorithm=AlgorithmConfig(name="gossip"),
                         topology=TopologyConfig(name="ring", schedule="failures", q=0.75)).validate()
    assert roundtrip(fl) == fl and roundtrip(failures) == failures


def test_roundtrip_of_empty_hidden_tuple():
    cfg = replace(RunConfig(), {"model.hidden": []})
    assert cfg.model.hidden == ()
    assert roundtrip(cfg) == cfg


def test_to_toml_layout():
    text = to_toml(RunConfig())
    lines = text.splitlines()
    first_table = lines.index("[data]")
    assert all("=" in line for line in lines[:first_table] if line)  # flat keys before any table
    assert [line for line in lines if line.startswith("[")] == [
        "[data]", "[model]", "[algorithm]", "[topology]", "[time]", "[faults]"]
    assert "vectorized = true" in lines and 'name = "run"' in lines and "hidden = [32]" in lines


@pytest.mark.parametrize("text", ["two\nlines", "cr\rhere", "ctl\x01char"])
def test_roundtrip_of_strings_with_control_characters(text):
    cfg = replace(RunConfig(), {"name": text})
    assert roundtrip(cfg) == cfg


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize("values, fragments", [
    ({"algorithm": {"lrr": 0.1}}, ["'lrr'", "[algorithm]", "did you mean 'lr'"]),
    ({"data": {"partiton": "iid"}}, ["'partiton'", "[data]", "did you mean 'partition'"]),
    ({"topology": {"mixng": "uniform"}}, ["'mixng'", "[topology]", "did you mean 'mixing'"]),
    ({"faults": {"los": 0.1}}, ["'los'", "[faults]", "did you mean 'loss'"]),
    ({"model": {"hiden": [8]}}, ["'hiden'", "[model]", "did you mean 'hidden'"]),
    ({"round": 3}, ["'round'", "did you mean 'rounds'"]),
    ({"algorthm": {"lr": 0.1}}, ["'algorthm'", "did you mean 'algorithm'"]),
])
def test_unknown_key_names_key_section_and_suggestion(values, fragments):
    msg = error_of(values)
    for fragment in fragments:
        assert fragment in msg
    assert "unknown key" in msg


def test_unknown_top_level_key_names_no_section():
    msg = error_of({"round": 3})
    assert "in [" not in msg
    assert "known keys:" in msg and "rounds" in msg


def test_unknown_key_without_close_match_lists_known_keys():
    msg = error_of({"algorithm": {"zzzzqqq": 1}})
    assert "'zzzzqqq'" in msg and "[algorithm]" in msg
    assert "did you mean" not in msg
    for key in ("lr", "momentum", "clients_per_round"):
        assert key in msg


# --------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize("dotted, value, fragment", [
    ("rounds", "3", "rounds must be an integer"),                          # string for an int
    ("seed", 2.0, "seed must be an integer"),                              # float for an int
    ("algorithm.local_steps", 1.5, "algorithm.local_steps must be an integer"),
    ("clients", True, "clients must be an integer"),                       # bool is not an int
    ("vectorized", 1, "vectorized must be true or false"),                 # int for a bool
    ("algorithm.same_init", 0, "algorithm.same_init must be true or false"),
    ("algorithm.weighted", "yes", "algorithm.weighted must be true or false"),
    ("model.hidden", [32, "64"], "model.hidden[1] must be an integer"),    # list element wrong type
    ("model.hidden", [32, 16, 1.5], "model.hidden[2] must be an integer"),
    ("model.hidden", 32, "model.hidden must be a list"),
    ("algorithm.lr", "fast", "algorithm.lr must be a number"),
    ("algorithm.lr", True, "algorithm.lr must be a number"),
    ("data.dataset", 3, "data.dataset must be a string"),
    ("name", ["a"], "name must be a string"),
])
def test_wrong_type_names_dotted_key(dotted, value, fragment):
    msg = error_of(nested(dotted, value))
    assert fragment in msg
    bad = value[-1] if isinstance(value, list) and "[" in fragment else value  # the offending element
    assert f"got {bad!r}" in msg


def test_section_that_is_not_a_table():
    msg = error_of({"data": 3})
    assert "[data]" in msg and "table" in msg


def test_int_is_accepted_for_float():
    cfg = from_dict({"algorithm": {"lr": 1}, "faults": {"loss": 0}})
    assert cfg.algorithm.lr == 1.0 and isinstance(cfg.algorithm.lr, float)
    assert isinstance(cfg.faults.loss, float)


def test_nan_from_toml_is_rejected():
    msg = error_of(tomllib.loads("[algorithm]\nlr = nan\n"))
    assert "algorithm.lr" in msg and "NaN" in msg


# --------------------------------------------------------------------------- out-of-range values


@pytest.mark.parametrize("dotted, value, fragments", [
    ("algorithm.lr", -0.1, ["got -0.1", "> 0"]),
    ("algorithm.lr", 0, ["> 0", "got 0.0"]),
    ("data.test_fraction", 1.5, ["got 1.5", "(0, 1)"]),
    ("data.test_fraction", 0, ["got 0.0"]),
    ("data.test_fraction", 1, ["got 1.0"]),
    ("algorithm.momentum", 1, ["got 1.0", "[0, 1)"]),
    ("algorithm.momentum", -0.5, ["got -0.5"]),
    ("data.dataset", "cifar10", ["'cifar10'", "'digits'", "'mnist'"]),
    ("data.partition", "random", ["'random'", "'dirichlet'"]),
    ("topology.mixing", "laplacian", ["'laplacian'", "'metropolis'"]),
    ("topology.schedule", "weekly", ["'weekly'", "'matching'"]),
    ("faults.loss", 2, ["got 2.0", "[0, 1]"]),
    ("faults.loss", -0.5, ["got -0.5"]),
    ("topology.q", 1.5, ["got 1.5"]),
    ("model.name", "resnet", ["'resnet'", "'lenet'"]),
    ("model.hidden", [32, 0], ["got 0"]),
    ("algorithm.name", "sgd", ["'sgd'", "'gossip'"]),
    ("algorithm.weight_decay", -1e-4, ["got -0.0001"]),
    ("algorithm.local_steps", -1, ["got -1"]),
    ("algorithm.batch_size", 0, ["got 0"]),
    ("algorithm.clients_per_round", -2, ["got -2"]),
    ("algorithm.active_fraction", 0, ["got 0.0"]),
    ("algorithm.active_fraction", 1.5, ["got 1.5"]),
    ("data.alpha", 0, ["got 0.0"]),
    ("data.per_client", 0, ["got 0"]),
    ("rounds", 0, ["got 0"]),
    ("clients", 0, ["got 0"]),
    ("eval_every", 0, ["got 0"]),
    ("checkpoint_every", -1, ["got -1"]),
    ("threads", -1, ["got -1"]),
    ("device", "tpu", ["'tpu'"]),
])
def test_out_of_range_names_key_and_value(dotted, value, fragments):
    msg = error_of(nested(dotted, value))
    assert dotted in msg
    for fragment in fragments:
        assert fragment in msg


@pytest.mark.parametrize("overrides", [
    {"algorithm.local_steps": 0},
    {"algorithm.momentum": 0.0},
    {"algorithm.momentum": 0.99, "algorithm.local_steps": 2},
    {"faults.loss": 0.0},
    {"faults.loss": 1.0},
    {"algorithm.name": "gossip", "topology.name": "ring", "topology.schedule": "failures", "topology.q": 0.0},
    {"algorithm.name": "gossip", "topology.name": "ring", "topology.schedule": "failures", "topology.q": 1.0},
    {"algorithm.active_fraction": 1.0},
    {"algorithm.clients_per_round": 10},   # == clients is fine
    {"checkpoint_every": 0},
    {"threads": 0},
    {"device": "cuda"},
    {"device": "cuda:3"},
    {"algorithm.name": "gossip", "topology.name": "ring"},
])
def test_boundary_values_are_accepted(overrides):
    cfg = replace(RunConfig(clients=10), overrides)
    for dotted, value in overrides.items():
        obj = cfg
        for part in dotted.split("."):
            obj = getattr(obj, part)
        assert obj == value


def test_fedavg_on_a_ring_points_to_gossip():
    msg = error_of({"algorithm": {"name": "fedavg"}, "topology": {"name": "ring"}})
    assert "'ring'" in msg and "gossip" in msg and "star" in msg


def test_clients_per_round_above_clients():
    msg = error_of({"clients": 4, "algorithm": {"clients_per_round": 5}})
    assert "algorithm.clients_per_round = 5" in msg and "clients = 4" in msg


def test_gossip_needs_two_clients():
    msg = error_of({"clients": 1, "algorithm": {"name": "gossip"}})
    assert "at least 2" in msg


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------- load


def test_load_invalid_toml_names_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\nrounds = = 3\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(path) in str(info.value) and "invalid TOML" in str(info.value)


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "nope.toml" in str(info.value) and "does not exist" in str(info.value)


def test_load_directory_is_not_a_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a TOML file"):
        load(tmp_path)


def test_load_names_text_that_is_not_utf8_and_accepts_a_byte_order_mark(tmp_path):
    """A config saved as UTF-16 (as some Windows editors do) or a binary file is one error naming the file."""
    for name, data in (("utf16.toml", 'rounds = 2\n'.encode("utf-16")), ("binary.toml", bytes(range(128, 256)))):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ConfigError, match="not UTF-8 text") as info:
            load(path)
        assert str(path) in str(info.value)
    bom = tmp_path / "bom.toml"
    bom.write_bytes('rounds = 2\n'.encode("utf-8-sig"))
    assert load(bom).rounds == 2


def test_load_prefixes_validation_errors_with_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("rounds = 2\n[algorithm]\nlrr = 0.1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "'lrr'" in msg and "'lr'" in msg


def test_load_reads_values(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text('name = "tiny"\nrounds = 2\nclients = 4\n[algorithm]\nname = "gossip"\nlr = 0.05\n'
                    '[topology]\nname = "regular"\nk = 2\n[model]\nhidden = [16, 8]\n')
    cfg = load(path)
    assert (cfg.name, cfg.rounds, cfg.clients) == ("tiny", 2, 4)
    assert cfg.algorithm == AlgorithmConfig(name="gossip", lr=0.05)
    assert cfg.topology == TopologyConfig(name="regular", k=2)
    assert cfg.model.hidden == (16, 8)


# --------------------------------------------------------------------------- replace


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_replace_changes_exactly_the_overrides():
    cfg = load(CONFIG_DIR / "quickstart_fedavg.toml")
    new = replace(cfg, {"algorithm.lr": 0.05, "rounds": 3})
    before, after = _flatten(cfg.to_dict()), _flatten(new.to_dict())
    assert before.keys() == after.keys()
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"algorithm.lr", "rounds"}
    assert new.algorithm.lr == 0.05 and new.rounds == 3
    assert cfg.algorithm.lr == 0.1 and cfg.rounds == 80  # the original is untouched


def test_replace_with_no_overrides_is_equal():
    cfg = load(CONFIG_DIR / "quickstart_gossip.toml")
    assert replace(cfg, {}) == cfg


def test_replace_accepts_tuples_for_lists():
    assert replace(RunConfig(), {"model.hidden": (64, 32)}).model.hidden == (64, 32)


def test_replace_unknown_section_errors():
    with pytest.raises(ConfigError) as info:
        replace(RunConfig(), {"optimizer.lr": 0.1})
    assert "'optimizer'" in str(info.value)


def test_replace_through_a_scalar_errors():
    with pytest.raises(ConfigError) as info:
        replace(RunConfig(), {"rounds.x": 1})
    assert "'rounds'" in str(info.value)


def test_replace_unknown_key_in_section_errors():
    with pytest.raises(ConfigError) as info:
        replace(RunConfig(), {"algorithm.lrr": 0.1})
    assert "'lrr'" in str(info.value) and "did you mean 'lr'" in str(info.value)


def test_replace_validates_the_result():
    with pytest.raises(ConfigError, match="rounds"):
        replace(RunConfig(), {"rounds": 0})
    with pytest.raises(ConfigError, match="gossip"):
        replace(RunConfig(), {"topology.name": "torus"})


def test_configs_are_frozen():
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rounds = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.algorithm.lr = 1.0  # type: ignore[misc]


def test_infinite_numbers_are_rejected():
    with pytest.raises(ConfigError, match="algorithm.lr must be finite"):
        from_dict({"algorithm": {"lr": float("inf")}})


def test_string_override_given_as_number_stays_a_string():
    assert replace(RunConfig(), {"name": 2024}).name == "2024"


@pytest.mark.parametrize("overrides, key", [
    ({"algorithm.momentum": 0.9, "algorithm.local_steps": 1}, "algorithm.momentum_buffer"),   # FedAvg resets
    ({"algorithm.momentum": 0.9, "algorithm.local_steps": 0}, "algorithm.local_steps = 0"),
    ({"algorithm.name": "gossip", "topology.name": "ring", "algorithm.momentum": 0.9, "algorithm.local_steps": 1,
      "algorithm.momentum_buffer": "reset"}, "algorithm.momentum_buffer"),
])
def test_momentum_that_would_do_nothing_is_refused(overrides, key):
    with pytest.raises(ConfigError, match=key):
        replace(RunConfig(), overrides)


def test_momentum_buffer_resolves_per_algorithm():
    fedavg = replace(RunConfig(), {"algorithm.momentum": 0.9, "algorithm.local_steps": 1,
                                   "algorithm.momentum_buffer": "keep"})
    gossip = replace(RunConfig(), {"algorithm.name": "gossip", "topology.name": "ring", "algorithm.momentum": 0.9})
    assert fedavg.algorithm.keep_momentum and gossip.algorithm.keep_momentum
    assert not RunConfig().algorithm.keep_momentum
    with pytest.raises(ConfigError, match="momentum_buffer"):
        replace(RunConfig(), {"algorithm.momentum_buffer": "sometimes"})


def test_negative_seed_is_a_config_error():
    with pytest.raises(ConfigError, match="seed must be >= 0"):
        replace(RunConfig(), {"seed": -1})


# --------------------------------------------------------------------------- gossip rules, time and faults


@pytest.mark.parametrize("overrides, fragments", [
    ({"algorithm.averaging": "beta"}, ["algorithm.averaging", "gossip rule"]),                 # on FedAvg
    ({"algorithm.name": "gossip", "topology.name": "ring", "algorithm.averaging": "mean"}, ["'mean'", "'beta'"]),
    ({"algorithm.name": "gossip", "topology.name": "ring", "algorithm.averaging": "beta", "algorithm.beta": 1.0},
     ["algorithm.beta", "[0, 1)"]),
    ({"algorithm.name": "gossip", "topology.name": "ring", "algorithm.beta": 0.3}, ["algorithm.beta", "'plain'"]),
    ({"algorithm.name": "gossip", "topology.name": "ring", "algorithm.averaging": "beta",
      "algorithm.correction_eps": 1e-4}, ["algorithm.correction_eps", "'variance_corrected'"]),
    ({"algorithm.name": "gossip", "topology.name": "directed_ring", "algorithm.averaging": "variance_corrected"},
     ["undirected", "push-sum"]),
    ({"time.mode": "async"}, ["time.mode = 'async'", "fedavg"]),
    ({"algorithm.name": "gossip", "topology.name": "directed_ring", "time.mode": "async"}, ["undirected"]),
    ({"algorithm.name": "gossip", "topology.name": "ring", "time.mode": "async", "algorithm.active_fraction": 0.5},
     ["algorithm.active_fraction", "async"]),
    ({"faults.delay": 2}, ["faults.delay", "gossip"]),
    ({"algorithm.name": "gossip", "topology.name": "ring", "topology.schedule": "matching", "faults.delay": 2},
     ["faults.delay", "static"]),
    ({"algorithm.name": "gossip", "topology.name": "ring", "faults.churn": 0.1}, ["faults.churn", "async"]),
    ({"algorithm.name": "gossip", "topology.name": "ring", "time.interval": [2, 3]}, ["time.interval", "async"]),
    ({"algorithm.name": "gossip", "topology.name": "ring", "time.mode": "async", "time.interval": [5, 3]},
     ["time.interval", "low <= high"]),
    ({"algorithm.name": "gossip", "topology.name": "ring", "time.mode": "async", "faults.churn_ticks": [0, 3]},
     ["faults.churn_ticks"]),
    ({"algorithm.name": "gossip", "topology.name": "ring", "time.mode": "async", "algorithm.momentum": 0.9,
      "algorithm.momentum_buffer": "reset", "algorithm.local_steps": 2}, ["momentum_buffer", "async"]),
    ({"model.init": "he"}, ["model.init", "'xavier'"]),
    # settings of one algorithm given to the other would be ignored silently
    ({"algorithm.name": "gossip", "topology.name": "ring", "algorithm.clients_per_round": 3},
     ["algorithm.clients_per_round", "'fedavg'", "active_fraction"]),
    ({"algorithm.name": "gossip", "topology.name": "ring", "algorithm.weighted": False},
     ["algorithm.weighted", "'fedavg'"]),
    ({"algorithm.active_fraction": 0.3}, ["algorithm.active_fraction", "'gossip'", "clients_per_round"]),
    ({"algorithm.name": "gossip", "topology.name": "directed_ring", "topology.mixing": "max_degree"},
     ["topology.mixing", "'directed_ring'", "push-sum"]),
    ({"algorithm.name": "gossip", "topology.name": "ring", "topology.q": 0.5}, ["topology.q", "'failures'", "'static'"]),
    ({"name": ""}, ["name = ''", "folder name"]),
    ({"name": "../../evil"}, ["name = '../../evil'", "folder name"]),
    ({"name": "runs/a"}, ["name = 'runs/a'"]),
    ({"name": ".."}, ["name = '..'"]),
])
def test_contradictory_gossip_settings_are_one_line_errors(overrides, fragments):
    with pytest.raises(ConfigError) as info:
        replace(RunConfig(), overrides)
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_taps_section_points_to_faults():
    with pytest.raises(ConfigError, match=r"\[faults\] loss"):
        from_dict({"taps": {"link_drop": 0.1}})


def test_the_settings_next_to_the_new_refusals_still_load():
    """What the refusals above must not catch: each setting with the algorithm, schedule or name it belongs to."""
    replace(RunConfig(), {"algorithm.clients_per_round": 3, "algorithm.weighted": False, "name": "fl.run-1"})
    replace(RunConfig(), {"algorithm.name": "gossip", "topology.name": "ring", "algorithm.active_fraction": 0.5})
    assert replace(RunConfig(), {"algorithm.name": "gossip", "topology.name": "ring", "topology.schedule": "failures",
                                 "topology.q": 0.5}).topology.q == 0.5
    replace(RunConfig(), {"algorithm.name": "gossip", "topology.name": "directed_ring"})
    replace(RunConfig(), {"algorithm.name": "gossip", "topology.name": "ring", "topology.mixing": "max_degree"})


def test_async_variance_corrected_config_round_trips():
    cfg = replace(RunConfig(), {"algorithm.name": "gossip", "topology.name": "regular", "time.mode": "async",
                                "time.interval": [1, 4], "faults.delay": 2, "faults.churn": 0.05,
                                "algorithm.averaging": "variance_corrected", "algorithm.correction_target": "follow_beta",
                                "algorithm.correction_eps": 1e-4, "model.init": "xavier"})
    assert roundtrip(cfg) == cfg and cfg.time.interval == (1, 4)
