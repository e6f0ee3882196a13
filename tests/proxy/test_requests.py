"""The typed requests (xen_tvd.proxy.requests): what the client sends is what the proxy parses,
refusals name the bad field, and vif-tvd's standard-library copy speaks the same wire form."""
from __future__ import annotations

import ast
import os
import re

import pytest

from xen_tvd.proxy import requests as rq
from xen_tvd.proxy.protocol import OPS, ProtocolError

from tests.common.paths import REPO

VIF_TVD = os.path.join(REPO, "xen_tvd", "data", "hotplug", "vif-tvd")
UUID = "5a1b3c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
PORT = "2bb7f7c1-08ed-4cd7-a771-62b912fa4251"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

EXAMPLES = [
    rq.Ping(), rq.Status(),
    rq.Register(uuid=UUID, name="web", nics=(rq.Nic("alpha", 0), rq.Nic("beta")),
                properties={"tpm-measured-boot": "immutable-log", "x": None}, cert=PEM,
                images=("/var/lib/xen/web.img",)),
    rq.Register(uuid=UUID),
    rq.Register(uuid=UUID, nics=(rq.Nic("alpha"),), tx_checksum_offload=False),
    rq.Unregister(UUID), rq.Join(UUID, "alpha"), rq.Join(UUID, "alpha", 2), rq.Leave(UUID, "alpha"),
    rq.VifOnline(ifname="vif3.0", uuid=UUID, domid=3, devid=0, bridge="tvd:alpha", type="tap",
                 mac="00:16:3e:00:00:01", addresses=("10.0.0.1", "fd00::1"), mtu=1400, name="web"),
    rq.VifOnline(ifname="vif3.1", uuid=UUID, domid=3, devid=1),
    rq.VifOffline("vif3.0"),
    rq.PortOnline(port=PORT, uuid=UUID, tvd="alpha", name="web", mac="52:54:00:00:00:01",
                  network="tvd-alpha", bridge="tvd-alpha"),
    rq.PortOnline(port=PORT, uuid=UUID, tvd=None),
    rq.PortOffline(PORT), rq.Check(uuid=UUID, tvds=("alpha", "gamma"), name="web"),
    rq.Inspect(tvds=("alpha", "gamma"), vifs=("vif3.0", "vif4.0"), mac="00:16:3e:00:00:04"),
    rq.Inspect(tvds=("alpha",)),
    rq.Probe(id="0123456789abcdef", phase="arm", src="10.0.0.1", dst="10.0.0.2", proto="tcp",
             port=443, ip_id=4242, inject="vif3.0", dst_mac="00:16:3e:00:00:04",
             watch=("vif4.0",), timeout=2.5),
    rq.Probe(id="0123456789abcdef", phase="arm", src="10.0.0.1", dst="10.0.0.2", ip_id=1),
    rq.Probe(id="0123456789abcdef", phase="collect"),
]


def test_every_op_has_one_request_class():
    assert sorted(rq.BY_OP) == sorted(OPS)


@pytest.mark.parametrize("req", EXAMPLES, ids=lambda r: r.OP)
def test_what_the_client_sends_is_what_the_proxy_parses(req):
    wire = req.to_wire()
    assert wire["op"] == req.OP
    assert rq.parse(wire) == req


@pytest.mark.parametrize("wire, error", [
    ({"op": "register"}, "'uuid' is missing or malformed: None"),
    ({"op": "register", "uuid": UUID, "name": 3}, "'name' must be a string"),
    ({"op": "register", "uuid": UUID, "nics": [{"tvd": "Alpha"}]}, "'tvd' is missing or malformed"),
    ({"op": "register", "uuid": UUID, "nics": [{"tvd": "alpha", "devid": -1}]},
     "'devid' must be a non-negative integer, got -1"),
    ({"op": "register", "uuid": UUID, "cert": "junk"}, "'cert' must be the VM certificate"),
    ({"op": "register", "uuid": UUID, "images": ["rel/path"]}, "at most 16 absolute paths"),
    ({"op": "register", "uuid": UUID, "tx_checksum_offload": 0},
     "'tx_checksum_offload' must be true or false (false: off on every vif of the VM), got 0"),
    ({"op": "vif-online", "ifname": "vif1.0", "uuid": UUID, "domid": True, "devid": 0},
     "'domid' must be a non-negative integer, got True"),
    ({"op": "vif-online", "ifname": "vif1.0", "uuid": UUID, "domid": 1, "devid": 0, "type": "pci"},
     "'type' must be vif or tap, got 'pci'"),
    ({"op": "vif-online", "ifname": "vif1.0", "uuid": UUID, "domid": 1, "devid": 0, "mac": "x"},
     "'mac' must be a MAC address"),
    ({"op": "vif-online", "ifname": "vif1.0", "uuid": UUID, "domid": 1, "devid": 0,
      "ip": "10.0.0.1 nope"}, "'nope' is not an IP address"),
    ({"op": "vif-online", "ifname": "vif1.0", "uuid": UUID, "domid": 1, "devid": 0, "mtu": 67},
     "'mtu' must be 68..65535, got 67"),
    ({"op": "vif-online", "ifname": "../eth0", "uuid": UUID, "domid": 1, "devid": 0},
     "'ifname' is missing or malformed"),
    ({"op": "check", "uuid": UUID, "tvds": []}, "'tvds' must be a list of 1-64 TVD names"),
    ({"op": "port-online", "port": "nope", "uuid": UUID}, "'port' is missing or malformed"),
    # inspect and probe answer bounded: two TVDs, two vifs, one probe of at most 10 s
    ({"op": "inspect", "tvds": ["a", "b", "c"]}, "'tvds' must be a list of 1-2 names"),
    ({"op": "inspect", "tvds": []}, "'tvds' must be a list of 1-2 names"),
    ({"op": "inspect", "tvds": ["a"], "vifs": ["v1", "v2", "v3"]},
     "'vifs' must be a list of 0-2 names"),
    ({"op": "probe", "id": "x", "phase": "arm"}, "'id' is missing or malformed"),
    ({"op": "probe", "id": "0123456789abcdef", "phase": "fire"}, "'phase' must be one of arm"),
    ({"op": "probe", "id": "0123456789abcdef", "phase": "arm", "src": "fd00::1",
      "dst": "10.0.0.2", "ip_id": 1}, "'src' must be an IPv4 address (a probe is IPv4 only)"),
    ({"op": "probe", "id": "0123456789abcdef", "phase": "arm", "src": "10.0.0.1",
      "dst": "10.0.0.2", "ip_id": 1, "proto": "tcp"}, "'port' must be a non-negative integer"),
    ({"op": "probe", "id": "0123456789abcdef", "phase": "arm", "src": "10.0.0.1",
      "dst": "10.0.0.2", "ip_id": 0}, "'ip_id' must be 1..65535"),
    ({"op": "probe", "id": "0123456789abcdef", "phase": "arm", "src": "10.0.0.1",
      "dst": "10.0.0.2", "ip_id": 1, "timeout": 60}, "'timeout' must be 0.1..10 seconds"),
])
def test_a_bad_field_is_named(wire, error):
    with pytest.raises(ProtocolError, match=re.escape(error)):
        rq.parse(wire)


def test_vif_online_reads_the_backend_keys_as_vif_tvd_writes_them():
    req = rq.parse({"op": "vif-online", "ifname": "vif1.0", "uuid": UUID, "domid": 1, "devid": 0,
                    "mac": "00:16:3E:00:00:0A", "ip": "10.0.0.1  10.0.0.2", "bridge": None,
                    "type": None, "name": "web", "mtu": None})
    assert (req.mac, req.addresses, req.type, req.mtu) == \
        ("00:16:3e:00:00:0a", ("10.0.0.1", "10.0.0.2"), "vif", None)


def _vif_tvd_requests() -> list[dict]:
    """The request dict literals vif-tvd passes to its proxy() client: {key: value source}."""
    tree = ast.parse(open(VIF_TVD).read())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "proxy" \
                and node.args and isinstance(node.args[0], ast.Dict):
            d = node.args[0]
            out.append({k.value: ast.unparse(v) for k, v in zip(d.keys, d.values)})
    return out


def test_vif_tvd_speaks_the_typed_requests_wire_form():
    """vif-tvd cannot import the package: its copy of vif-online/vif-offline must send exactly
    the keys the typed requests define (hand-checked values: the parse tests above)."""
    sent = _vif_tvd_requests()
    assert {r["op"] for r in sent} == {"'vif-online'", "'vif-offline'"}
    full = rq.VifOnline(ifname="v", uuid=UUID, domid=1, devid=0, bridge="b", type="vif",
                        mac="00:16:3e:00:00:01", addresses=("10.0.0.1",), mtu=1500, name="n")
    for r in sent:
        want = full.to_wire() if r["op"] == "'vif-online'" else rq.VifOffline("v").to_wire()
        assert set(r) == set(want), r
