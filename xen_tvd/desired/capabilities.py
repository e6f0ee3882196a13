"""The one capability vocabulary: what a Dom0 reports it can do, and what the policy's C(h) means.

Two words per capability, on purpose. The capability report (docs/master-protocol.md, step 3)
names a kernel feature a probe found (`functional`: bridge, vxlan, vlan, nftables, ...); the
policy names what a host offers the TVD model (the paper's C(h): ethernet, ip, vlan). A policy
word counts on a host only when its report shows the feature that backs it (EVIDENCE,
master/decide.py). Each transport brings its own capability (desired/transports); the rest are
here.

    FUNCTIONAL  every functional word a report may carry, in probe order
    PROBES      functional word -> sh command that succeeds in a fresh netns iff it is present
    POLICY      the policy's capability words, in the order the schema lists them
    EVIDENCE    policy word -> the functional word that backs it
"""
from __future__ import annotations

from .transports import ORDER, Capability

BRIDGE = Capability("bridge", "ip link add tvdprobe0 type bridge", policy="ethernet")
NFTABLES = Capability("nftables", "nft add table inet tvdprobe")
# an ESP state with the AEAD the kernel would need for encrypted segments
IPSEC = Capability("ipsec", "ip xfrm state add src 127.0.0.1 dst 127.0.0.2 proto esp spi 0x100 "
                            "mode transport aead 'rfc4106(gcm(aes))' "
                            "0x0102030405060708090a0b0c0d0e0f1011121314 128")

_ALL = (BRIDGE, *(t.capability for t in ORDER), NFTABLES, IPSEC)
# the same feature twice (a transport taking over one listed here) counts once
ALL: tuple[Capability, ...] = tuple({c.functional: c for c in _ALL}.values())

FUNCTIONAL = tuple(c.functional for c in ALL)
PROBES = {c.functional: c.probe for c in ALL}
EVIDENCE = {c.policy: c.functional for c in ALL if c.policy}
# the paper's C(h) words in its order (section 5.1), then any a transport adds
_PAPER = ("vlan", "ethernet", "ip")
POLICY = _PAPER + tuple(w for w in EVIDENCE if w not in _PAPER)
