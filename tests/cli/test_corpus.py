"""A corpus of malformed policies: each gives its exit code, one line per problem in
FILE:LINE:COL form, the expected message at the expected node, and never a traceback."""
from __future__ import annotations

import re

import pytest

from tests.cli.cli_helpers import diag_lines, no_traceback, tvdctl

V = "version: 1\n"
T2 = "tvds:\n  a: {vlan: 10}\n  b: {vlan: 20}\n"
FLOW = V + T2 + "flows:\n  - "          # the flow entry starts on line 6, column 5


def flow(entry: str) -> bytes:
    return (FLOW + entry + "\n").encode()


def big_file() -> bytes:
    line = b"# " + b"x" * 1021 + b"\n"
    return V.encode() + line * (20 * 1024)           # 20 MiB of comments after a valid start


# (id, content, expected message fragment, line, col) -- every case exits 1
CORPUS = [
    ("binary-garbage", bytes(range(256)) * 4, "not UTF-8 text", 2, 118),
    ("empty-file", b"", "the file is empty", 1, 1),
    ("only-a-comment", b"# nothing here\n", "the file is empty", 1, 1),
    ("top-level-list", b"- version: 1\n- tvds: {}\n", "the policy file must be a mapping, not a list", 1, 1),
    ("top-level-scalar", b"hello\n", "the policy file must be a mapping, not a string", 1, 1),
    ("twenty-mib", big_file, "file is larger than 16 MiB", 1, 1),
    ("deep-nesting", b"x: " + b"[" * 10000 + b"]" * 10000 + b"\n", "nesting deeper than 64 levels", 1, 67),
    ("deep-block-nesting", "".join(f"{'  ' * i}k{i}:\n" for i in range(100)).encode(),
     "nesting deeper than 64 levels", 65, 129),
    ("billion-laughs", (V + 'a: &a ["lol","lol","lol"]\nb: &b [*a,*a,*a]\nc: &c [*b,*b,*b]\n'
                        'd: [*c,*c,*c]\n' + T2).encode(), "YAML anchors are not allowed", 2, 4),
    ("alias-of-flow", (V + T2 + "flows:\n  - &f {from: a, to: b, policy: open}\n  - *f\n").encode(),
     "YAML anchors are not allowed", 6, 5),
    ("merge-key", (V + T2 + "<<: {x: 1}\n").encode(), "keys of the policy file must be plain strings", 5, 1),
    ("two-documents", (V + T2 + "---\n" + V + T2).encode(), "only one YAML document is allowed", 5, 1),
    ("dup-key-top", (V + T2 + "version: 1\n").encode(), "duplicate key 'version' in the policy file (first at line 1)", 5, 1),
    ("dup-key-tvds", (V + "tvds:\n  a: {vlan: 10}\n  a: {vlan: 11}\n").encode(), "duplicate key 'a' in tvds (first at line 3)", 4, 3),
    ("dup-key-tvd", (V + "tvds:\n  a: {vlan: 10, vlan: 11}\n").encode(), "duplicate key 'vlan' in TVD 'a'", 3, 17),
    ("dup-key-rule", flow("{from: a, to: b, policy: controlled, allow: [{proto: tcp, proto: udp}]}"),
     "duplicate key 'proto' in rule", 6, 63),
    ("vlan-string", (V + "tvds:\n  a: {vlan: ten}\n").encode(), "vlan of TVD 'a' must be an integer, not a string", 3, 13),
    ("vlan-bool", (V + "tvds:\n  a: {vlan: true}\n").encode(), "vlan of TVD 'a' must be an integer, not a boolean", 3, 13),
    ("vlan-float", (V + "tvds:\n  a: {vlan: 1.5}\n").encode(), "vlan of TVD 'a' must be an integer, not a number", 3, 13),
    ("vlan-timestamp", (V + "tvds:\n  a: {vlan: 2020-13-45}\n").encode(), "vlan of TVD 'a': unreadable value '2020-13-45'", 3, 13),
    ("vlan-bad-int-tag", (V + "tvds:\n  a: {vlan: !!int abc}\n").encode(), "unreadable value 'abc'", 3, 13),
    ("vlan-5000-digits", (V + "tvds:\n  a: {vlan: " + "9" * 5000 + "}\n").encode(), "unreadable value '9999", 3, 13),
    ("membership-mapping", (V + "properties: {p: {}}\ntvds:\n  a: {vlan: 10, membership: {p: 1}}\n").encode(),
     "membership of TVD 'a' must be a list, not a mapping", 4, 29),
    ("flows-mapping", (V + T2 + "flows: {from: a, to: b}\n").encode(), "flows must be a list, not a mapping", 5, 8),
    ("tvds-list", (V + "tvds: [a, b]\n").encode(), "tvds must be a mapping, not a list", 2, 7),
    ("version-string", ("version: '1'\n" + T2).encode(), "version must be an integer, not a string", 1, 10),
    ("version-2", ("version: 2\n" + T2).encode(), "unsupported policy version", 1, 10),
    ("replies-int", flow("{from: a, to: b, policy: open, replies: 1}"), "replies must be true or false, not an integer", 6, 45),
    ("tagged-key", (V + "tvds:\n  !x a: {vlan: 10}\n").encode(), "keys of tvds must be plain strings", 3, 3),
    ("python-tag", (V + "tvds:\n  a: {vlan: !!python/object:os.system x}\n").encode(), "unreadable value 'x'", 3, 13),
    ("unknown-top-key", (V + T2 + "flow: []\n").encode(), "unknown key 'flow' in the policy file", 5, 1),
    ("unknown-tvd-key", (V + "tvds:\n  a: {vlan: 10, vlna: 11}\n").encode(), "unknown key 'vlna' in TVD 'a'", 3, 17),
    ("unknown-flow-key", flow("{from: a, to: b, policy: open, port: 80}"), "unknown key 'port' in flow entry", 6, 36),
    ("unknown-rule-key", flow("{from: a, to: b, policy: controlled, allow: [{proto: tcp, ports: 80}]}"),
     "unknown key 'ports' in rule", 6, 63),
    ("unknown-side-key", flow("{from: a, to: b, policy: controlled, sender: {allow: [], deny: []}, "
                              "receiver: {allow: []}}"), "unknown key 'deny' in sender", 6, 62),
    ("unknown-property-key", (V + "properties:\n  p: {dominate: [q]}\n" + T2).encode(),
     "unknown key 'dominate' in property 'p'", 3, 7),
    ("unknown-requirement-key", (V + "properties: {p: {}}\ntvds:\n  a: {vlan: 10, membership: [{property: p, proof: x}]}\n").encode(),
     "unknown key 'proof' in membership requirement", 4, 44),
    ("unknown-dummy-key", (V + T2 + "dummy: {policy: closed, vlan: [1]}\n").encode(), "unknown key 'vlan' in dummy", 5, 25),
    ("unknown-network-key", (V + T2 + "networks:\n  lan: {subnet: 10.0.0.0/24, speed: 10}\n").encode(),
     "unknown key 'speed' in network 'lan'", 6, 30),
    ("unknown-host-key", (V + T2 + "hosts:\n  h: {address: 10.0.0.1, capabilities: [ip], cpu: 4}\n").encode(),
     "unknown key 'cpu' in host 'h'", 6, 46),
    ("unknown-nic-key", (V + T2 + "networks: {lan: {subnet: 10.0.0.0/24}}\nhosts:\n  h: {address: 10.0.0.1, capabilities: [ip], "
                         "nics: [{network: lan, nic: eth0, address: 10.0.0.1, mac: x}]}\n").encode(),
     "unknown key 'mac' in nic", 7, 98),
    ("vlan-0", (V + "tvds:\n  a: {vlan: 0}\n").encode(), "vlan of TVD 'a' 0 is out of range 1..4094", 3, 13),
    ("vlan-4095", (V + "tvds:\n  a: {vlan: 4095}\n").encode(), "vlan of TVD 'a' 4095 is out of range 1..4094", 3, 13),
    ("vni-0", (V + "tvds:\n  a: {vlan: 10, vni: 0}\n").encode(), "vni of TVD 'a' 0 is out of range 1..16777215", 3, 22),
    ("vni-too-big", (V + "tvds:\n  a: {vlan: 10, vni: 16777216}\n").encode(), "vni of TVD 'a' 16777216 is out of range", 3, 22),
    ("duplicate-vlan", (V + "tvds:\n  a: {vlan: 10}\n  b: {vlan: 10, vni: 5}\n").encode(), "TVD 'b' reuses VLAN 10 of TVD 'a'", 4, 3),
    ("duplicate-vni", (V + "tvds:\n  a: {vlan: 10, vni: 7}\n  b: {vlan: 20, vni: 7}\n").encode(), "TVD 'b' reuses VNI 7 of TVD 'a'", 4, 3),
    ("unknown-dominated", (V + "properties:\n  p: {dominates: [q]}\n" + T2).encode(), "unknown property 'q' in property 'p' dominates", 3, 19),
    ("unknown-excluded", (V + "properties:\n  p: {excludes: [q]}\n" + T2).encode(), "unknown property 'q' in property 'p' excludes", 3, 18),
    ("unknown-membership", (V + "tvds:\n  a: {vlan: 10, membership: [ghost]}\n").encode(), "unknown property 'ghost' in membership of TVD 'a'", 3, 30),
    ("unknown-flow-tvd", flow("{from: a, to: c, policy: open}"), "unknown tvd 'c' in flow", 6, 19),
    ("unknown-shared-tvd", (V + T2 + "shared-membership: [[a, zz]]\n").encode(), "unknown tvd 'zz' in shared-membership", 5, 25),
    ("self-flow", flow("{from: a, to: a, policy: open}"), "flow from 'a' to itself", 6, 5),
    ("duplicate-flow", (FLOW + "{from: a, to: b, policy: open}\n  - {from: a, to: b, policy: closed}\n").encode(),
     "second entry for a -> b (first at line 6)", 7, 5),
    ("controlled-without-rules", flow("{from: a, to: b, policy: controlled}"), "controlled flow a -> b has no rules", 6, 5),
    ("controlled-one-side", flow("{from: a, to: b, policy: controlled, sender: {allow: [{proto: tcp}]}}"),
     "lacks its 'receiver' side", 6, 5),
    ("allow-on-open", flow("{from: a, to: b, policy: open, allow: [{proto: tcp}]}"), "'allow' only belongs to a controlled flow", 6, 36),
    ("port-on-icmp", flow("{from: a, to: b, policy: controlled, allow: [{proto: icmp, port: 7}]}"),
     "port only applies to tcp or udp, not icmp", 6, 70),
    ("bad-port-range", flow("{from: a, to: b, policy: controlled, allow: [{proto: tcp, port: 9000-80}]}"),
     "port range 9000-80 must satisfy 1 <= low <= high <= 65535", 6, 69),
    ("port-not-a-range", flow("{from: a, to: b, policy: controlled, allow: [{proto: tcp, port: http}]}"),
     "port 'http' must be a number or a range", 6, 69),
    ("port-too-big", flow("{from: a, to: b, policy: controlled, allow: [{proto: tcp, port: 70000}]}"),
     "port 70000 is out of range 1..65535", 6, 69),
    ("bad-proto", flow("{from: a, to: b, policy: controlled, allow: [{proto: sctp}]}"), "proto 'sctp' is not one of", 6, 58),
    ("bad-policy-kind", flow("{from: a, to: b, policy: maybe}"), "policy 'maybe' is not one of: open, controlled, closed", 6, 30),
    ("property-cycle", (V + "properties:\n  p: {dominates: [q]}\n  q: {dominates: [r]}\n  r: {dominates: [p]}\n" + T2).encode(),
     "cycle in the property order: p > q > r > p", 3, 3),
    ("bad-multicast", (V + "tvds:\n  a: {vlan: 10, multicast-group: 224.0.0.1}\n").encode(), "must be a routable multicast address", 3, 34),
    ("multicast-not-ip", (V + "tvds:\n  a: {vlan: 10, multicast-group: group-1}\n").encode(), "'group-1' is not an IPv4 address", 3, 34),
    ("unknown-assurance", (V + "properties: {p: {}}\ntvds:\n  a: {vlan: 10, membership: [{property: p, assurance: [hope]}]}\n").encode(),
     "'hope' is not one of: trust, mutable-log", 4, 56),
    ("unknown-host-assurance", (V + "properties: {p: {}}\n" + T2 + "hosts:\n  h: {address: 10.0.0.1, capabilities: [ip], properties: {p: hope}}\n").encode(),
     "assurance of 'p' 'hope' is not one of", 7, 62),
    ("bad-subnet", (V + T2 + "networks:\n  lan: {subnet: 10.0.0.0/40}\n").encode(), "subnet '10.0.0.0/40' is not an IPv4 network", 6, 17),
    ("host-outside-subnet", (V + T2 + "networks:\n  lan: {subnet: 10.0.0.0/24}\nhosts:\n  h: {address: 10.0.0.1, capabilities: [ip], "
                             "nics: [{network: lan, nic: eth0, address: 10.9.0.1}]}\n").encode(),
     "host 'h' address 10.9.0.1 is outside network 'lan' (10.0.0.0/24)", 8, 53),
    ("bad-capability", (V + T2 + "hosts:\n  h: {address: 10.0.0.1, capabilities: [wifi]}\n").encode(), "'wifi' is not one of: vlan, ethernet, ip", 6, 41),
    ("bad-name", (V + "tvds:\n  Alpha: {vlan: 10}\n").encode(), "TVD name 'Alpha' is not valid", 3, 3),
    ("reserved-dummy", (V + "tvds:\n  dummy: {vlan: 10}\n").encode(), "'dummy' is reserved", 3, 3),
    ("missing-required", V.encode(), "the policy file lacks required key 'tvds'", 1, 1),
    ("tvd-lacks-vlan", (V + "tvds:\n  a: {vni: 5}\n").encode(), "TVD 'a' lacks required key 'vlan'", 3, 6),
    ("tab-indent", (V + "tvds:\n\ta: {vlan: 10}\n").encode(), "found character '\\t' that cannot start any token", 3, 1),
    ("unclosed-brace", (V + "tvds: {a: {vlan: 10}\n").encode(), "expected ',' or '}'", 3, 1),
    ("bad-indent", (V + "tvds:\n  a:\n    vlan: 10\n   vni: 5\n").encode(), "YAML syntax:", 5, 4),
    ("non-utf8", (V + "tvds:\n  a: {vlan: 10, description: \"caf").encode() + b"\xe9\"}\n", "not UTF-8 text", 3, 34),
    ("nul-byte", (V + "tvds:\n  a: {vlan: 1").encode() + b"\x00}\n", "unacceptable character #x0000", 3, 14),
    ("control-char", (V + "tvds:\n  a: {vlan: 1, description: \"x\x07\"}\n").encode(), "unacceptable character #x0007", 3, 31),
    ("open-indirect-flow", (V + "tvds:\n  a: {vlan: 10}\n  b: {vlan: 20}\n  c: {vlan: 30}\nflows:\n"
                            "  - {from: a, to: c, policy: open, replies: false}\n"
                            "  - {from: c, to: b, policy: open, replies: false}\n").encode(),
     "closed pair a -> b is bypassed by open path a -> c -> b (a -> c is open; c -> b is open)", 7, 5),
    ("membership-conflict", (V + "properties:\n  x: {excludes: [y]}\n  y: {}\ntvds:\n  a: {vlan: 10, membership: [x, y]}\n").encode(),
     "TVD 'a' can admit no machine", 6, 3),
    ("dummy-controlled", flow("{from: a, to: dummy, policy: controlled, allow: [{proto: tcp}], replies: false}"),
     "the dummy TVD enforces no policy of its own", 6, 5),
]


@pytest.mark.parametrize("case_id, content, fragment, line, col", CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_policy(tmp_path, case_id, content, fragment, line, col):
    name = f"{case_id}.yaml"
    (tmp_path / name).write_bytes(content() if callable(content) else content)
    p = tvdctl("check", name, cwd=tmp_path)
    no_traceback(p)
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = diag_lines(p, name)
    want = re.compile(rf"^{re.escape(name)}:{line}:{col}: error: .*{re.escape(fragment)}")
    assert any(want.match(ln) for ln in lines), f"expected {line}:{col} {fragment!r} in:\n{p.stdout}"


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 35


MANY = """\
version: 1
properties:
  p: {dominates: [q]}
  q: {dominates: [p]}
tvds:
  a: {vlan: 0}
  b: {vlan: 20, vni: 16777216, colour: red}
  c: {vlan: 20}
  d: {vlan: 30, membership: [ghost]}
flows:
  - {from: a, to: zz, policy: open}
  - {from: b, to: b, policy: open}
  - {from: c, to: d, policy: controlled}
  - {from: c, to: d, policy: sometimes}
dummy: {policy: ajar}
"""


def test_many_problems_all_reported_in_one_run(tmp_path):
    (tmp_path / "many.yaml").write_text(MANY)
    p = tvdctl("check", "many.yaml", cwd=tmp_path)
    no_traceback(p)
    assert p.returncode == 1
    lines = diag_lines(p, "many.yaml")
    expected = [
        (6, 13, "vlan of TVD 'a' 0 is out of range"),
        (7, 22, "vni of TVD 'b' 16777216 is out of range"),
        (7, 32, "unknown key 'colour' in TVD 'b'"),
        (8, 3, "TVD 'c' reuses VLAN 20 of TVD 'b'"),
        (9, 30, "unknown property 'ghost' in membership of TVD 'd'"),
        (11, 19, "unknown tvd 'zz' in flow"),
        (12, 5, "flow from 'b' to itself"),
        (13, 5, "controlled flow c -> d has no rules"),
        (14, 30, "policy 'sometimes' is not one of"),
        (15, 17, "dummy policy 'ajar' is not one of"),
        (3, 3, "cycle in the property order: p > q > p"),
    ]
    for line, col, frag in expected:
        want = re.compile(rf"^many\.yaml:{line}:{col}: error: .*{re.escape(frag)}")
        assert any(want.match(ln) for ln in lines), f"missing {line}:{col} {frag!r}:\n{p.stdout}"
    assert p.stderr.startswith(f"1 file(s): {len(lines)} error(s)")
