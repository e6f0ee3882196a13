"""The `status` answer (docs/proxy-protocol.md): what the proxy holds, as plain JSON.

tvdctl, the labs and the tests read it through client.ProxyClient.status().
"""
from __future__ import annotations

from . import observe
from .state import Registration


def registration(reg: Registration) -> dict:
    d = reg.to_json()
    if d.get("cert"):
        d["cert"] = "(PEM, %d bytes)" % len(d["cert"])   # status output stays readable
    return d


def status(core) -> dict:
    """The tables are copied under the core's lock; the kernel is read after it is released
    (observe.StatusView says why)."""
    with core.lock:
        applied = core.applied
        segs = []
        for s in (applied.segments if applied else ()):
            up = s.uplink
            segs.append({"tvd": s.tvd, "bridge": s.bridge, "mtu": s.mtu,
                         "uplink": None if up is None else type(up).__name__})
        tables = {"host": core.host,
                  "vifs": [vars(core.vifs[k]) for k in sorted(core.vifs)],
                  "ports": [vars(core.ports[k]) for k in sorted(core.ports)],
                  "registrations": [registration(core.regs[k]) for k in sorted(core.regs)],
                  "segments": segs,
                  # routed inter-TVD flows: the TVDs with a card in this host's router
                  "router": [leg.tvd for leg in (applied.router.legs
                                                 if applied and applied.router else ())]}
        seen = observe.view(core)
        mode = core.authority.status()
    # segments and vifs in full, drops, degraded (observe.py)
    return {**tables, **observe.status(core.dataplane, seen), **mode}
