"""fedsim.flower.tls: the certificates themselves (checked with cryptography and Python's ssl), and a secure
deployment on localhost in which nodes with the CA take part and a node without it cannot join."""

import json
import ssl
import stat
import time
from pathlib import Path

import pytest

pytest.importorskip("cryptography")     # installed with flwr (the flower extra)

from cryptography import x509  # noqa: E402

from fedsim.flower.tls import files_in, main, make_certificates  # noqa: E402

APP = Path(__file__).parent / "deploy_fixture_app"


def test_certificates_chain_to_their_ca_and_name_localhost(tmp_path):
    files = make_certificates(tmp_path / "a", hosts=["flower.example", "10.0.0.7"])
    assert files == files_in(tmp_path / "a")
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)                     # raises if the signature or issuer do not match
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "flower.example"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.0.0.7"}
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600
    # Python's TLS stack accepts the pair and the CA (what the SuperLink and the nodes do with them)
    ctx = ssl.create_default_context(cafile=str(files.ca_cert))
    ctx.load_cert_chain(str(files.server_cert), str(files.server_key))
    # a second call makes another CA, which does not vouch for the first one's certificate
    other = make_certificates(tmp_path / "b")
    with pytest.raises(Exception):
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(other.ca_cert.read_bytes()))


def test_script_writes_the_files(tmp_path, capsys):
    assert main([str(tmp_path / "certs"), "--host", "node1"]) == 0
    assert str(files_in(tmp_path / "certs").server_key) in capsys.readouterr().out
    assert all(p.stat().st_size > 0 for p in vars(files_in(tmp_path / "certs")).values())
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x"), "--days", "0"])


@pytest.mark.flower
@pytest.mark.deploy
def test_secure_deployment_admits_only_nodes_with_the_ca(tmp_path):
    pytest.importorskip("flwr")
    from fedsim.flower.deploy import LocalFederation, still_running

    tls, wrong = make_certificates(tmp_path / "tls"), make_certificates(tmp_path / "other")
    with LocalFederation(tmp_path / "run", tls=tls) as fed:
        fed.start_superlink()
        for i in range(2):
            fed.start_supernode(i, 2)
        wrong_ca = fed.start_supernode(2, 3, root_certificates=wrong.ca_cert, name="wrong-ca")
        no_tls = fed.start_supernode(3, 4, name="insecure", insecure=True)
        fed.wait_healthy(timeout=60)
        assert fed.superlink_healthy()                          # https with our CA
        # neither intruder registers; the one with the wrong CA gives up on the certificate within 30 s
        deadline = time.monotonic() + 30
        while wrong_ca.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert wrong_ca.popen.returncode not in (None, 0)
        assert "CERTIFICATE_VERIFY_FAILED" in wrong_ca.log.read_text()
        assert fed.registered_id(wrong_ca) is None and fed.registered_id(no_tls) is None
        out = tmp_path / "run"
        info = fed.run_app(APP, {"result-dir": str(out), "rounds": 1, "min-nodes": 2}, timeout=120)
        assert info["status"] == "finished:completed" and info["traffic_bytes"] > 0
        result = json.loads((out / "result.json").read_text())
        assert result["nodes"] == 2 and result["rounds"][0]["pids"] == [0, 1]
    assert no_tls.pid in fed.seen and not still_running(fed.seen.items())
