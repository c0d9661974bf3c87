"""``fedsim flower --mode deployment --tls``: a real deployment (SuperLink + 3 SuperNodes as processes on
localhost, TLS with certificates from fedsim.flower.tls) of FedPG on the NSL-KDD paper split matches the in-process
Flower runner; every process is gone afterwards (checked by PID and start time).

Tolerance: the largest principal angle between the two final subspaces Z below 1e-9 rad, and the per-round
residuals within 1e-9 relative (float64 everywhere; both drivers do the same operations, but in other processes,
so exact equality is not asserted)."""

import json

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402

from fedsim.cli import main  # noqa: E402
from fedsim.flower.deploy import still_running  # noqa: E402
from fedsim.flower.inprocess import run_spec  # noqa: E402
from fedsim.flower.spec import make_spec  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.deploy, pytest.mark.needs_data("nsl-kdd")]


def principal_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Principal angles from the sines (accurate for small angles, unlike arccos of the cosines)."""
    qa, _ = torch.linalg.qr(A)
    qb, _ = torch.linalg.qr(B)
    return torch.arcsin(torch.linalg.svdvals(qb - qa @ (qa.T @ qb)).clamp(max=1.0))


def test_fedpg_tls_deployment_from_the_cli_matches_inprocess(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    args = ["flower", "--mode", "deployment", "--tls", "--algorithm", "fedpg", "--clients", "3", "--rounds", "2",
            "--data-dir", str(data_root), "--set", "round-timeout=120.0", "--timeout", "400", "--out", str(out)]
    assert main(args) == 0
    assert "fedpg on Flower (deployment), 3 clients" in capsys.readouterr().out
    ref, ref_final = run_spec(make_spec("fedpg", clients=3, rounds=2, **{"data-dir": str(data_root)}))
    result = json.loads((out / "results.json").read_text())
    assert result["args"]["mode"] == "deployment"
    Z = torch.load(out / "final.pt", weights_only=True)["Z"]
    assert Z.shape == ref_final["Z"].shape == (34, 5)
    assert principal_angles(Z, ref_final["Z"]).max() < 1e-9
    got = torch.tensor([h["residual"] for h in result["history"]], dtype=torch.float64)
    want = torch.tensor([h["residual"] for h in ref["history"]], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    assert [h["participants"] for h in result["history"]] == [3, 3]
    assert result["rejected"] == [] and result["dropped"] == []
    # the launcher's report: TLS on, 3 registered nodes, and nothing it started is left
    report = json.loads((out / "deployment.json").read_text())
    assert report["tls"] and report["status"] == "finished" and sorted(report["node_ids"]) == ["0", "1", "2"]
    assert (out / "tls" / "ca.crt").is_file() and "https://127.0.0.1" in (out / "logs" / "superlink.log").read_text()
    assert report["processes"] and not still_running(report["processes"])
