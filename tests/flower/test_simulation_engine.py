"""Flower's simulation engine (Ray, through ``flwr run``) gives the engine's result within float tolerance, and
leaves no process behind (every process started under the run's FLWR_HOME is gone)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("ray")

from fedsim.flower import simulation  # noqa: E402
from fedsim.flower.runner import run_mode  # noqa: E402
from fedsim.flower.spec import make_spec  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.slow]   # ~40 s: Ray starts in ~20 s here


def test_ray_simulation_matches_the_engine(tmp_path, monkeypatch):
    import dataclasses

    from fedsim.engine import simulate
    from fedsim.experiment import build

    homes = []
    real = simulation.tempfile.mkdtemp
    monkeypatch.setattr(simulation.tempfile, "mkdtemp", lambda **kw: homes.append(real(**kw)) or homes[-1])
    spec = make_spec("gossip", clients=4, rounds=3, topology="ring", batch_size=8, hidden="16",
                     averaging="variance_corrected", beta=0.4, out=str(tmp_path))
    result = run_mode(spec, "simulation", timeout=300)
    final = torch.load(tmp_path / "final.pt")
    setup = build(dataclasses.replace(spec.run, vectorized=False))
    ref = simulate(setup.algorithm, setup.fed, spec.run.rounds, eval_every=0).state.x
    assert final["clients"].tolist() == [0, 1, 2, 3] and result["dropped"] == [] and result["rejected"] == []
    torch.testing.assert_close(final["x"], ref, rtol=0, atol=1e-5)   # float32; Ray workers may differ in last bits
    assert len(homes) == 1 and not os.path.exists(homes[0])
    assert simulation.processes_with_env("FLWR_HOME", homes[0]) == []
