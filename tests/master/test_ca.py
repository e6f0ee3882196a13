"""The master's CA: init layout and modes, certificate contents, CSR checks, VM certs."""
import ipaddress
import os
import stat
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xen_tvd.master import ca as camod
from xen_tvd.master.vmcert import VmCertRejected, vm_properties


def test_init_writes_keys_0600_and_is_idempotent_for_the_same_url(ca_dir):
    for k in ("ca.key", "server.key", "signer.key"):
        assert stat.S_IMODE(os.stat(os.path.join(ca_dir, k)).st_mode) == 0o600
    before = open(os.path.join(ca_dir, "ca.pem")).read()
    _, created = camod.init_ca(ca_dir, "https://127.0.0.1:8443")
    assert not created and open(os.path.join(ca_dir, "ca.pem")).read() == before
    with pytest.raises(camod.CaError, match="initialised for https://127.0.0.1:8443"):
        camod.init_ca(ca_dir, "https://master.example:8443")


def test_write_private_key_never_overwrites(tmp_path):
    p = str(tmp_path / "k")
    camod.write_private_key(p, camod.new_ec_key())
    with pytest.raises(FileExistsError):
        camod.write_private_key(p, camod.new_ec_key())


def test_server_cert_san_is_the_url_host_ip_or_dns(the_ca):
    key = camod.new_ec_key()
    c = the_ca.issue_server(key.public_key(), "https://10.99.0.1:8443")
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.99.0.1")]
    c = the_ca.issue_server(key.public_key(), "https://master.lab:8443")
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["master.lab"]
    eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku


def csr_for(key, cn="ignored"):
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def test_host_cert_from_csr_takes_its_subject_from_the_master_and_lasts_30_days(the_ca):
    key = camod.new_ec_key()
    c = the_ca.issue_from_csr(csr_for(key, "h-evil"), "h1", camod.HOST_OU)
    assert camod.identity(c)[:2] == (camod.HOST_OU, "h1")
    days = (c.not_valid_after_utc - c.not_valid_before_utc).total_seconds() / 86400
    assert 30 <= days < 30.01
    c.verify_directly_issued_by(the_ca.cert)
    assert c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_csr_with_a_broken_signature_or_garbage_is_refused(the_ca):
    text = csr_for(camod.new_ec_key())
    with pytest.raises(camod.CaError, match="not a PEM"):
        the_ca.issue_from_csr("hello", "h1", camod.HOST_OU)
    der = bytearray(x509.load_pem_x509_csr(text.encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF   # inside the signature
    import base64
    bad = ("-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der)).decode()
           + "-----END CERTIFICATE REQUEST-----\n")
    with pytest.raises(camod.CaError):
        the_ca.issue_from_csr(bad, "h1", camod.HOST_OU)


def test_signer_cert_is_ed25519_with_the_signer_ou(ca_dir, the_ca):
    c = camod.load_cert(os.path.join(ca_dir, "signer.pem"))
    assert camod.identity(c)[0] == "xen-tvd-policy-signer"
    c.verify_directly_issued_by(the_ca.cert)


VM = str(uuid.UUID(int=42))


def test_vm_cert_carries_uuid_and_properties_and_is_checked(the_ca, other_ca):
    key = camod.new_ec_key()
    c = the_ca.issue_vm(key.public_key(), "web", VM, {"web-server": "introspection"})
    assert vm_properties(camod.pem(c), the_ca.cert, VM) == {"web-server": "introspection"}
    with pytest.raises(VmCertRejected, match="revoked"):
        vm_properties(camod.pem(c), the_ca.cert, VM, [c.serial_number])
    with pytest.raises(VmCertRejected, match="not VM"):
        vm_properties(camod.pem(c), the_ca.cert, str(uuid.UUID(int=43)))
    with pytest.raises(VmCertRejected, match="not issued by"):
        vm_properties(camod.pem(c), other_ca.cert, VM)
    host = the_ca.issue_client(key.public_key(), "h1", camod.HOST_OU)
    with pytest.raises(VmCertRejected, match="not a VM certificate"):
        vm_properties(camod.pem(host), the_ca.cert, VM)


def test_ca_pin_is_32_hex_of_the_der_sha256(the_ca):
    import hashlib
    der = the_ca.cert.public_bytes(serialization.Encoding.DER)
    assert camod.ca_pin(the_ca.cert) == hashlib.sha256(der).hexdigest()[:32]
