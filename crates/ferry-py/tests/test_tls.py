"""Mutual TLS: certificates made here (cryptography, installed with NVFlare), a TLS sender
(stcp tickets) and TLS receivers named after their certificates."""

from __future__ import annotations

import datetime

import pytest

import ferry
from conftest import LONG, sha256, write_file

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, key, cert):
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(d, names, ca_cn="ferry-test-ca"):
    """A CA and one certificate per CN, as PEM files in `d`: (ca path, {cn: TLS})."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_cn))
        .issuer_name(_name(ca_cn))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(d / ca_cn, ca_key, ca)
    out = {}
    for cn in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn), x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(d / cn, key, cert)
        out[cn] = ferry.TLS(cert=d / f"{cn}.crt", key=d / f"{cn}.key", ca=d / f"{ca_cn}.crt")
    return out


def test_files_and_tensors_over_mutual_tls(tmp_path):
    np = pytest.importorskip("numpy")
    tls = make_pki(tmp_path, ["ferry-sender", "site-1"])
    assert tls["site-1"].common_name == "site-1"
    src = write_file(tmp_path / "a.bin", (1 << 20) + 3)
    with ferry.Sender(tls=tls["ferry-sender"], receivers=1) as s:
        assert s.url.startswith("stcp://")
        t_file = s.add_file(src)
        t_tensors = s.add_tensors({"w": np.arange(12, dtype=np.float32).reshape(3, 4)})
        assert ferry.Ticket(t_file).tls and ferry.Ticket(t_file).url.startswith("ferry+stcp://")
        with pytest.raises(ferry.UsageError, match="TLS sender"):
            ferry.get(t_file, tmp_path / "plain")
        # Named after its certificate (site-1) by default.
        assert sha256(ferry.get(t_file, tmp_path / "out", tls=tls["site-1"])) == sha256(src)
        got = ferry.download_tensors(t_tensors, tls=tls["site-1"])
        assert np.array_equal(got["w"], np.arange(12, dtype=np.float32).reshape(3, 4))
        o = s.wait(LONG)
    assert o.completed
    assert all(list(st) == ["site-1"] for st in o.receivers.values())


def test_a_receiver_from_another_ca_is_refused(tmp_path):
    good = make_pki(tmp_path, ["ferry-sender"])
    (tmp_path / "other").mkdir()
    rogue = make_pki(tmp_path / "other", ["site-1"], ca_cn="rogue-ca")
    src = write_file(tmp_path / "a.bin", 100)
    with ferry.Sender(tls=good["ferry-sender"]) as s:
        t = s.add_file(src)
        with pytest.raises(ferry.FerryError, match="TLS|refused"):
            ferry.get(t, tmp_path / "out", tls=rogue["site-1"], request_timeout=10.0)
    assert not (tmp_path / "out" / "a.bin").exists()


def test_tls_files_are_checked_up_front(tmp_path):
    with pytest.raises(ferry.UsageError, match="no such file"):
        ferry.TLS(cert=tmp_path / "x.crt", key=tmp_path / "x.key", ca=tmp_path / "ca.crt")
    (tmp_path / "x.crt").write_text("not pem")
    (tmp_path / "x.key").write_text("not pem")
    (tmp_path / "ca.crt").write_text("not pem")
    with pytest.raises(ferry.UsageError, match="TLS files unusable"):
        ferry.TLS(cert=tmp_path / "x.crt", key=tmp_path / "x.key", ca=tmp_path / "ca.crt")
    with pytest.raises(ferry.UsageError, match="needs tls"):
        ferry.Sender(listen="stcp://127.0.0.1:0")
