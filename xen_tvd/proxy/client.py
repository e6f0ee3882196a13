"""The typed tvd-proxy client: one method per op, the requests of requests.py on the wire.

Used by tvdctl (cli/xl.py), the libvirt hooks, the lab and the tests, so no caller builds a
request dict by hand. An answer with `ok: false` raises ProxyRefused (a Refused: front ends
already map it to their refusal exit code); no answer at all raises ProxyUnreachable.
vif-tvd cannot import this package and keeps its own standard-library client.
"""
from __future__ import annotations

from xen_tvd.errors import Refused

from . import requests as rq
from .protocol import ProxyUnreachable, default_timeout, request, socket_path

__all__ = ["ProxyClient", "ProxyRefused", "ProxyUnreachable"]


class ProxyRefused(Refused):
    """The proxy answered and said no; `error` is its one-line reason, `op` the request's."""

    def __init__(self, op: str, error: str) -> None:
        super().__init__(f"tvd-proxy refused {op}: {error}")
        self.op, self.error = op, error


class ProxyClient:
    def __init__(self, path: str | None = None, timeout: float | None = None) -> None:
        self.path = path or socket_path()
        self.timeout = default_timeout() if timeout is None else timeout

    def send(self, req: "rq.Request") -> dict:
        """The whole answer, ok or not (for callers that report refusals themselves)."""
        return request(req.to_wire(), self.path, self.timeout)

    def call(self, req: "rq.Request") -> dict:
        """The answer of an accepted request; ProxyRefused otherwise."""
        resp = self.send(req)
        if not resp.get("ok"):
            raise ProxyRefused(req.OP, resp.get("error") or "tvd-proxy said no (no reason given)")
        return resp

    def ping(self) -> dict:
        return self.call(rq.Ping())

    def status(self) -> dict:
        """host, vifs, ports, registrations, segments, router (+ master in master mode)."""
        return self.call(rq.Status())

    def register(self, uuid: str, name: str = "", nics=(), properties=None,
                 cert: str | None = None, images=(), tx_checksum_offload: bool = True) -> dict:
        """nics: (tvd, devid or None) pairs or requests.Nic; answers {mtu: {tvd: MTU}}.
        tx_checksum_offload=False: off on every vif of the VM (xl.cfg tvd_tx_checksum_offload)."""
        return self.call(rq.Register(
            uuid=uuid, name=name,
            nics=tuple(n if isinstance(n, rq.Nic) else rq.Nic(tvd=n[0], devid=n[1]) for n in nics),
            properties=dict(properties or {}), cert=cert, images=tuple(images),
            tx_checksum_offload=tx_checksum_offload))

    def unregister(self, uuid: str) -> dict:
        return self.call(rq.Unregister(uuid))

    def join(self, uuid: str, tvd: str, devid: int | None = None) -> dict:
        return self.call(rq.Join(uuid, tvd, devid))

    def leave(self, uuid: str, tvd: str) -> dict:
        """Answers detached (ifnames) and libvirt_ports (port UUIDs it could not detach)."""
        return self.call(rq.Leave(uuid, tvd))

    def vif_online(self, ifname: str, uuid: str, domid: int, devid: int, **optional) -> dict:
        """optional: bridge, type, mac, addresses, mtu, name (requests.VifOnline).
        Answers tvd, bridge, mtu (and mtu_lowered_from)."""
        return self.call(rq.VifOnline(ifname=ifname, uuid=uuid, domid=domid, devid=devid,
                                      **optional))

    def vif_offline(self, ifname: str) -> dict:
        return self.call(rq.VifOffline(ifname))

    def port_online(self, port: str, uuid: str, tvd: str | None, **optional) -> dict:
        """optional: name, mac, network, bridge (requests.PortOnline)."""
        return self.call(rq.PortOnline(port=port, uuid=uuid, tvd=tvd, **optional))

    def port_offline(self, port: str) -> dict:
        return self.call(rq.PortOffline(port))

    def check(self, uuid: str, tvds, name: str = "") -> dict:
        return self.call(rq.Check(uuid=uuid, tvds=tuple(tvds), name=name))

    def inspect(self, tvds, vifs=(), mac: str | None = None) -> dict:
        """The live kernel of one exchange here (tvdctl explain): segments, vifs, FDB, the
        flow filter's chains for the pair and port security's rules, with counters."""
        return self.call(rq.Inspect(tvds=tuple(tvds), vifs=tuple(vifs), mac=mac))

    def probe_arm(self, pid: str, src: str, dst: str, proto: str, port: int | None, ip_id: int,
                  inject: str | None = None, dst_mac: str | None = None, watch=(),
                  timeout: float = 1.5) -> dict:
        return self.call(rq.Probe(id=pid, phase="arm", src=src, dst=dst, proto=proto,
                                  port=port, ip_id=ip_id, inject=inject, dst_mac=dst_mac,
                                  watch=tuple(watch), timeout=timeout))

    def probe_collect(self, pid: str) -> dict:
        """Waits for the probe's outcome (at most its timeout): arrived, answered, dropped."""
        return self.call(rq.Probe(id=pid, phase="collect"))
