"""verify_bundle: what a proxy accepts, and every way a bundle is refused."""
import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from xen_tvd.master import ca as camod
from xen_tvd.master.bundle import BundleRejected, canonical, sign_bundle, verify_bundle

URL = "https://127.0.0.1:8443"


def payload(**over):
    p = {"format": 1, "master": URL, "host": "h1", "generation": 7, "issued": 1.0,
         "policy": "version: 1\n", "plan": {"segments": []}, "refused": {"γ": "ü"}}
    p.update(over)
    return p


def test_a_good_bundle_verifies_and_returns_the_payload(the_ca, signer):
    env = sign_bundle(payload(), *signer)
    assert verify_bundle(env, the_ca.cert, "h1", URL, 7) == payload()
    assert verify_bundle(json.loads(json.dumps(env)), camod.pem(the_ca.cert), "h1", URL, 0)


def test_canonical_json_is_sorted_compact_utf8():
    assert canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def reject(env, ca, host="h1", url=URL, gen=0):
    with pytest.raises(BundleRejected) as e:
        verify_bundle(env, ca, host, url, gen)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_tampered_payload_is_refused(the_ca, signer):
    env = sign_bundle(payload(), *signer)
    body = json.loads(base64.b64decode(env["payload"]))
    body["plan"]["segments"] = [{"tvd": "evil"}]
    env["payload"] = base64.b64encode(canonical(body)).decode()
    assert "signature does not verify" in reject(env, the_ca.cert)


def test_signer_from_another_ca_is_refused(the_ca, other_ca, ca_dir):
    key = ed25519.Ed25519PrivateKey.generate()
    cert = other_ca.issue_signer(key.public_key())
    assert "not issued by the master's CA" in reject(
        sign_bundle(payload(), key, camod.pem(cert)), the_ca.cert)


def test_signer_without_the_policy_signer_ou_is_refused(the_ca):
    # an admin (or host) certificate of the right CA must not be able to sign policy
    key = ed25519.Ed25519PrivateKey.generate()
    cert = the_ca.issue_client(key.public_key(), "alice", camod.ADMIN_OU)
    assert "lacks OU xen-tvd-policy-signer" in reject(
        sign_bundle(payload(), key, camod.pem(cert)), the_ca.cert)


def test_expired_signer_is_refused(the_ca):
    import datetime as dt
    key = ed25519.Ed25519PrivateKey.generate()
    cert = the_ca._sign(the_ca._builder(
        camod._name("old signer", camod.SIGNER_OU), key.public_key(), 1,
        dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)))
    assert "not valid now" in reject(sign_bundle(payload(), key, camod.pem(cert)), the_ca.cert)


def test_rollback_other_host_and_other_master_are_refused(the_ca, signer):
    env = sign_bundle(payload(generation=6), *signer)
    assert "rollback" in reject(env, the_ca.cert, gen=7)
    assert "not 'h2'" in reject(env, the_ca.cert, host="h2")
    assert "from master" in reject(env, the_ca.cert, url="https://10.0.0.9:8443")


@pytest.mark.parametrize("env", [None, [], {"payload": "x"},
                                 {"payload": "!!", "signature": "!!", "signer": "x"}])
def test_malformed_envelopes_are_refused(the_ca, env):
    reject(env, the_ca.cert)


def test_unsigned_payload_with_a_valid_signer_is_refused(the_ca, signer):
    env = sign_bundle(payload(), *signer)
    env["signature"] = base64.b64encode(b"\0" * 64).decode()
    assert "signature" in reject(env, the_ca.cert)
