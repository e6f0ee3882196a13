"""nftables.converge / drop: the one "render -> stamp digest -> compare -> replace" path every
whole table xen-tvd owns is loaded by (tier 1, in a throw-away namespace)."""
from __future__ import annotations

from xen_tvd.dataplane import nftables

A = nftables.Table("inet", "tvdt_a", digest_chain="c")
B = nftables.Table("bridge", "tvdt_b")


def _body(n: int) -> str:
    return ("  chain c {\n    type filter hook input priority filter; policy accept;\n"
            f'    meta mark {n} counter comment "@DIGEST@"\n  }}\n')


def test_converge_writes_only_what_changed_and_drop_removes(ns):
    assert nftables.converge(ns, [(A, _body(1)), (B, _body(1))], "test") == "created"
    digest = nftables.installed_digest(ns, A)
    assert digest and nftables.installed_digest(ns, B) == digest   # one digest for both
    assert nftables.converge(ns, [(A, _body(1)), (B, _body(1))], "test") is None
    assert nftables.converge(ns, [(A, _body(1)), (B, _body(2))], "test") == "replaced"
    assert nftables.installed_digest(ns, A) not in (None, False, digest)
    assert nftables.drop(ns, [A, B], "test")
    assert nftables.installed_digest(ns, A) is False and nftables.installed_digest(ns, B) is False
    assert not nftables.drop(ns, [A, B], "test")


def test_a_table_without_our_digest_is_replaced(ns):
    nftables.run(ns, "table inet tvdt_a {\n  chain c { type filter hook input priority 0; }\n}\n",
                 "test: a foreign ruleset under our name")
    assert nftables.installed_digest(ns, A) is None
    assert nftables.converge(ns, [(A, _body(1))], "test") == "replaced"
    assert nftables.converge(ns, [(A, _body(1))], "test") is None
