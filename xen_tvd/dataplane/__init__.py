"""The only layer that touches the kernel: reconcile a HostState into one network namespace.

    report = apply(state, netns=None)        # bridges, uplinks, ports, offloads; idempotent
    plug_vif(port, segment, netns=None, frontend_mtu_cb=None)   # hotplug "online"
    unplug_vif(ifname, netns=None)                              # hotplug "offline"
    bridge_ports(netns=None)    # read-only: {TVD bridge: [foreign ports]} as the kernel has them
    health(state, netns=None)   # read-only: segments' and vifs' problems as the kernel shows them
    drop_counters(netns=None)   # read-only: what the drop rules counted, per pair / vif and reason
    fdb(bridge, mac, netns=None)    # read-only: the vSwitch's forwarding entries for a MAC
    identify(ifname, netns=None)   # read-only: driver, backend, master, addresses of a device
    inspect(state, tvds, vifs, mac, netns=None)   # read-only: one exchange's vifs, FDB, rules
    Probe(ProbeSpec(...), netns=None)   # arm / send / collect / close: one traced real packet
    probe_leftovers(netns=None, router_netns=None, keep=())   # tables of crashed probes

Errors escape only as DataplaneError with a one-line message.
"""
from .device import DeviceFacts, identify
from .report import ApplyReport, DataplaneError
from .health import drop_counters, fdb, health
from .exchange import inspect
from .probe import Probe, ProbeSpec, leftovers as probe_leftovers
from .reconcile import apply
from .vif import bridge_ports, plug_vif, unplug_vif

__all__ = ["apply", "plug_vif", "unplug_vif", "bridge_ports", "health", "drop_counters", "fdb",
           "identify", "DeviceFacts", "ApplyReport", "DataplaneError", "inspect", "Probe",
           "ProbeSpec", "probe_leftovers"]
