"""The proxy's own WireGuard key pair (proxy/wgkey.py; issue #15 point 2): made once with
O_EXCL and mode 0600, never overwritten or repaired, read back only if still private; only the
public key leaves (the capability report, `tvd-proxy wireguard-key`)."""
from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from xen_tvd.desired.patterns import is_wireguard_key
from xen_tvd.proxy import capabilities, wgkey

from tests.common.paths import REPO



def _public_of(private_b64: str) -> str:
    priv = X25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    return base64.b64encode(priv.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def test_key_pair_is_made_once_private_and_in_wireguards_format(tmp_path):
    state = tmp_path / "state"
    old = os.umask(0)       # a careless umask must not widen the file
    try:
        public = wgkey.ensure(str(state))
    finally:
        os.umask(old)
    path = state / wgkey.FILE_NAME
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    text = path.read_text()
    assert text.endswith("\n") and len(text.strip()) == 44     # as `wg genkey` writes
    assert is_wireguard_key(public) and public == _public_of(text.strip())
    assert public not in text
    # a restart keeps the pair: the file is neither rewritten nor replaced
    ino = st.st_ino
    assert wgkey.ensure(str(state)) == public == wgkey.public_key(str(state))
    assert os.stat(path).st_ino == ino and path.read_text() == text
    # two hosts, two pairs
    assert wgkey.ensure(str(tmp_path / "other")) != public


def test_existing_key_file_is_used_not_overwritten(tmp_path):
    # O_EXCL: whoever made the file first (another proxy starting at once, or the
    # administrator with `wg genkey`) wins; the file is taken as it is
    priv = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    body = base64.b64encode(priv).decode() + "\n"
    path = tmp_path / wgkey.FILE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, body.encode())
    os.close(fd)
    assert wgkey.ensure(str(tmp_path)) == _public_of(body.strip())
    assert path.read_text() == body


@pytest.mark.parametrize("case", ["group-readable", "symlink", "directory", "garbage", "short"])
def test_unsafe_or_broken_key_file_is_refused_never_repaired(tmp_path, case):
    path = tmp_path / wgkey.FILE_NAME
    target = tmp_path / "elsewhere"
    good = base64.b64encode(os.urandom(32)).decode() + "\n"
    if case == "group-readable":
        path.write_text(good)
        os.chmod(path, 0o640)
        match = "mode 0640; group or others may have read it"
    elif case == "symlink":
        target.write_text(good)
        os.chmod(target, 0o600)
        path.symlink_to(target)
        match = "a symlink is refused"
    elif case == "directory":
        path.mkdir()
        match = "cannot open|not a regular file"
    else:
        path.write_text("not a key\n" if case == "garbage" else base64.b64encode(b"x" * 16).decode())
        os.chmod(path, 0o600)
        match = "not a base64 32-byte key"
    before = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    with pytest.raises(wgkey.KeyFileError, match=match) as e:
        wgkey.ensure(str(tmp_path))
    # the message never carries key material
    assert good.strip() not in str(e.value)
    if before is not None:
        assert path.read_bytes() == before
    if case == "symlink":
        assert target.read_text() == good


def test_capability_report_carries_the_public_key_only(tmp_path):
    public = wgkey.ensure(str(tmp_path))
    private = (tmp_path / wgkey.FILE_NAME).read_text().strip()
    body = capabilities.report(str(tmp_path / "absent.json"), False, public)
    assert body["wireguard-key"] == public
    assert private not in repr(body)
    assert "wireguard-key" not in capabilities.report(str(tmp_path / "absent.json"), False)


def test_tvd_proxy_wireguard_key_prints_the_public_key(tmp_path):
    def run():
        return subprocess.run([sys.executable, "-m", "xen_tvd.proxy.main", "wireguard-key",
                               "--state-dir", str(tmp_path)], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
    first, second = run(), run()
    assert first.returncode == 0 and first.stdout == second.stdout
    private = (tmp_path / wgkey.FILE_NAME).read_text().strip()
    assert first.stdout.strip() == _public_of(private)
    assert private not in first.stdout + first.stderr
    os.chmod(tmp_path / wgkey.FILE_NAME, 0o644)
    bad = run()
    assert bad.returncode == 2 and "mode 0644" in bad.stderr and "Traceback" not in bad.stderr


def test_rotation_makes_the_next_pair_beside_the_key_and_promotes_only_the_named_key(tmp_path):
    from xen_tvd.desired.wireguard import key_tag
    state = str(tmp_path)
    with pytest.raises(wgkey.KeyFileError, match="does not exist"):
        wgkey.rotate(state)                # a rotation needs the pair it rotates from
    current = wgkey.ensure(state)
    private = (tmp_path / wgkey.FILE_NAME).read_text()
    old = os.umask(0)
    try:
        nxt = wgkey.rotate(state)
    finally:
        os.umask(old)
    path = tmp_path / (wgkey.FILE_NAME + ".next")
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert is_wireguard_key(nxt) and nxt == _public_of(path.read_text().strip())
    assert nxt != current and key_tag(nxt) != key_tag(current)   # two inner addresses
    # one rotation at a time: asking again gives the pending key, the file untouched
    ino = st.st_ino
    assert wgkey.rotate(state) == nxt and os.stat(path).st_ino == ino
    assert wgkey.keys(state) == (current, nxt)
    # the current key stays until the pending one is promoted, and only that one is
    assert (tmp_path / wgkey.FILE_NAME).read_text() == private
    assert not wgkey.promote(state, current) and wgkey.keys(state) == (current, nxt)
    assert wgkey.promote(state, nxt)
    assert wgkey.keys(state) == (nxt, None) and not path.exists()
    assert stat.S_IMODE(os.stat(tmp_path / wgkey.FILE_NAME).st_mode) == 0o600
    assert private.strip() not in (tmp_path / wgkey.FILE_NAME).read_text()
    assert not wgkey.promote(state, nxt)      # nothing pending
    # an unsafe pending file is refused as the key file is, never used
    again = wgkey.rotate(state)
    os.chmod(path, 0o640)
    with pytest.raises(wgkey.KeyFileError, match="mode 0640"):
        wgkey.keys(state)
    with pytest.raises(wgkey.KeyFileError, match="mode 0640"):
        wgkey.promote(state, again)
    assert wgkey.public_key(state) == nxt


def test_tvd_proxy_wireguard_key_rotate_prints_the_next_key_only(tmp_path):
    def run(*extra):
        return subprocess.run([sys.executable, "-m", "xen_tvd.proxy.main", "wireguard-key",
                               "--state-dir", str(tmp_path), *extra], capture_output=True,
                              text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
    current = run().stdout.strip()
    first, second = run("--rotate"), run("--rotate")
    assert first.returncode == 0 and first.stdout == second.stdout
    pending = (tmp_path / (wgkey.FILE_NAME + ".next")).read_text().strip()
    assert first.stdout.strip() == _public_of(pending) != current
    assert "wireguard-next-key" in first.stderr
    for out in (first, second):
        assert pending not in out.stdout + out.stderr
    assert run().stdout.strip() == current        # still the key it runs with


def test_capability_report_carries_a_rotations_public_keys_only(tmp_path):
    current = wgkey.ensure(str(tmp_path))
    nxt = wgkey.rotate(str(tmp_path))
    body = capabilities.report(str(tmp_path / "absent.json"), False, current, nxt, [nxt])
    assert (body["wireguard-key"], body["wireguard-next-key"], body["wireguard-accepts"]) == \
        (current, nxt, [nxt])
    for f in (wgkey.FILE_NAME, wgkey.FILE_NAME + ".next"):
        assert (tmp_path / f).read_text().strip() not in repr(body)
    plain = capabilities.report(str(tmp_path / "absent.json"), False, current)
    assert "wireguard-next-key" not in plain and "wireguard-accepts" not in plain
