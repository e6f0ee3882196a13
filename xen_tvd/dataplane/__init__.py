"""The only layer that touches the kernel: reconcile a HostState into one network namespace.

    report = apply(state, netns=None)        # bridges, uplinks, ports, offloads; idempotent
    plug_vif(port, segment, netns=None, frontend_mtu_cb=None)   # hotplug "online"
    unplug_vif(ifname, netns=None)                              # hotplug "offline"

Errors escape only as DataplaneError with a one-line message.
"""
from .report import ApplyReport, DataplaneError
from .reconcile import apply
from .vif import plug_vif, unplug_vif

__all__ = ["apply", "plug_vif", "unplug_vif", "ApplyReport", "DataplaneError"]
