"""The proxy core's one door to the kernel (the dataplane's public API, nothing else).

The core (core.py) is given a port: KernelDataplane on a Dom0 and in the labs; unit tests
give it a small recording stand-in (tests/proxy/test_core.py) so the core's decisions are
tested without namespaces. Every failure is a DataplaneError with a one-line message.
"""
from __future__ import annotations

from typing import Protocol

from xen_tvd.dataplane import (ApplyReport, DataplaneError, DeviceFacts, Probe, ProbeSpec,
                               apply, bridge_ports, drop_counters, health, identify, inspect,
                               plug_vif, probe_leftovers, unplug_vif)
from xen_tvd.desired.model import HostState, Segment, VifPort
from xen_tvd.desired.transports.wireguard import WireguardUplink
from xen_tvd.log import log

__all__ = ["DataplanePort", "KernelDataplane", "DataplaneError", "DeviceFacts"]


class DataplanePort(Protocol):
    def apply(self, state: HostState) -> ApplyReport: ...
    def plug(self, port: VifPort, segment: Segment, log_drops: int = 0) -> None: ...
    def unplug(self, ifname: str) -> None: ...
    def bridge_ports(self) -> dict[str, list[str]]: ...
    def identify(self, ifname: str) -> DeviceFacts | None: ...
    def health(self, state: HostState) -> dict: ...
    def drop_counters(self) -> dict: ...
    def inspect(self, state: HostState, tvds, vifs, mac: str | None) -> dict: ...
    def probe(self, spec: ProbeSpec) -> Probe: ...
    def probe_leftovers(self, router_netns: str | None, keep: set[str]) -> list[str]: ...


class KernelDataplane:
    """The current network namespace (tvd-proxy --netns setns()es the whole process).
    state_dir: where the host's WireGuard key files are (made by wgkey.py, read only by the
    dataplane when a segment rides WireGuard). on_key_switched(): called after the host
    switched to its pending key and that key became its key file (master mode: report it)."""

    def __init__(self, state_dir: str | None = None, on_key_switched=None) -> None:
        self.state_dir = state_dir
        self.on_key_switched = on_key_switched

    @property
    def wireguard_key(self) -> str | None:
        from . import wgkey
        return wgkey.path_in(self.state_dir) if self.state_dir else None

    def apply(self, state: HostState) -> ApplyReport:
        report = apply(state, wireguard_key=self.wireguard_key)
        self._settle_rotation(state)
        return report

    def _settle_rotation(self, state: HostState) -> None:
        """After a whole apply that ran the device on the pending key (the plan named it: the
        peers accept it), the pending key becomes the key file and the old private key is gone."""
        if not self.state_dir:
            return
        used = {s.uplink.key for s in state.segments if isinstance(s.uplink, WireguardUplink)}
        if len(used) != 1 or not next(iter(used)):
            return
        from . import wgkey
        try:
            switched = wgkey.promote(self.state_dir, next(iter(used)))
        except (OSError, wgkey.KeyFileError) as e:
            log("error", "wireguard-key-not-promoted", error=getattr(e, "strerror", None) or str(e))
            return
        if switched:
            log("info", "wireguard-key-rotated", detail="the device runs with the new key pair; "
                "the old private key is removed", file=self.wireguard_key)
            if self.on_key_switched is not None:
                self.on_key_switched()

    def plug(self, port: VifPort, segment: Segment, log_drops: int = 0) -> None:
        plug_vif(port, segment, log_drops=log_drops)

    def unplug(self, ifname: str) -> None:
        unplug_vif(ifname)

    def bridge_ports(self) -> dict[str, list[str]]:
        return bridge_ports(None)

    def identify(self, ifname: str) -> DeviceFacts | None:
        return identify(ifname)

    def health(self, state: HostState) -> dict:
        """Read-only, for status (observe.py): segments' and vifs' problems."""
        return health(state)

    def drop_counters(self) -> dict:
        """Read-only, for status and metrics (observe.py): what the drop rules counted."""
        return drop_counters(None)

    def inspect(self, state: HostState, tvds, vifs, mac: str | None) -> dict:
        """Read-only, for tvdctl explain (explain.py): one exchange's vifs, FDB and rules."""
        return inspect(state, tvds, vifs, mac)

    def probe(self, spec: ProbeSpec) -> Probe:
        """tvdctl explain --probe: one traced packet (arm, send, collect, close)."""
        return Probe(spec)

    def probe_leftovers(self, router_netns: str | None, keep: set[str]) -> list[str]:
        """The tables of probes a crashed proxy left behind, removed."""
        return probe_leftovers(None, router_netns, keep)
