"""Is the interface a vif-online names what the request says it is? (issue #16.2)

A request naming the host's uplink (`ifname: eth0`) once put it into a TVD bridge, and the
matching vif-offline left it down. Before anything touches a device the proxy checks it:

- Xen's backend vif (driver `vif`, netback): its backend device must be `vif-DOMID-DEVID` of
  the request, so another domain's vif is refused too;
- the emulated NIC's tap (driver `tun`): named `vif<domid>.<devid>-emu`, or, with xl's
  vifname=, `<name>-emu` beside the netback vif `<name>` of that domain and devid;
- drivers named by `tvd-proxy run --vif-driver` (the labs' veth "vifs"): the driver only;
- in every case: not a device xen-tvd made, not a NIC of this host in the capability model,
  no IPv4 or global IPv6 address, and not enslaved to anything but a TVD vSwitch.
A missing interface is left to the attach, which refuses it ("no such interface").
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .admission import Denied

if TYPE_CHECKING:   # main.py imports LAB_DRIVERS: no pyroute2 for `tvd-proxy --help`
    from .dataplane_port import DeviceFacts
    from .requests import VifOnline

NETBACK = "vif"      # the kernel driver of a Xen backend vif
TAP = "tun"          # the driver of qemu's tap (the emulated NIC of an HVM domain)
LAB_DRIVERS = ("veth",)   # what --vif-driver may add


def check(facts: DeviceFacts | None, req: VifOnline, host_nics: set[str],
          extra_drivers: frozenset[str], identify) -> None:
    """Denied unless the device is the request's vif. `identify(name)` -> DeviceFacts | None
    looks at a sibling (the netback vif beside a renamed tap)."""
    if facts is None:
        return
    name = req.ifname
    refuse = f"refusing {name} as vif {req.devid} of domain {req.domid}"
    if facts.owned:
        raise Denied(f"{refuse}: it is a device xen-tvd made (a vSwitch, uplink or router leg)")
    if name in host_nics:
        raise Denied(f"{refuse}: it is a NIC of this host in the capability model (an uplink)")
    if facts.routable_addresses:
        raise Denied(f"{refuse}: it has IP addresses, so it is a host interface, not a VM's vif")
    if facts.master is not None and not facts.master_owned:
        raise Denied(f"{refuse}: it is enslaved to {facts.master}, which is not a TVD vSwitch")
    if facts.driver in extra_drivers:
        return
    if req.type == "vif":
        want = f"vif-{req.domid}-{req.devid}"
        if facts.driver == NETBACK and facts.bus_info == want:
            return
        if facts.driver == NETBACK:
            raise Denied(f"{refuse}: it is the Xen backend {facts.bus_info or '?'}, not {want}")
    elif facts.driver == TAP:
        if _tap_of(name, req, identify):
            return
        raise Denied(f"{refuse}: it is a tap, but neither vif{req.domid}.{req.devid}-emu nor "
                     f"beside the netback vif of that domain and devid")
    what = "a Xen backend vif (driver vif)" if req.type == "vif" else \
        f"the emulated NIC's tap (driver tun, vif{req.domid}.{req.devid}-emu)"
    raise Denied(f"{refuse}: its driver is {facts.driver or 'unknown'}, not {what}")


def _tap_of(name: str, req: VifOnline, identify) -> bool:
    if name == f"vif{req.domid}.{req.devid}-emu":
        return True
    if not name.endswith("-emu"):
        return False
    sibling = identify(name[:-len("-emu")])   # xl vifname=: <name> and <name>-emu
    return sibling is not None and sibling.driver == NETBACK and \
        sibling.bus_info == f"vif-{req.domid}-{req.devid}"


def host_nics(policy, host: str) -> set[str]:
    """The NICs the capability model gives this host (none without a policy)."""
    h = policy.hosts.get(host) if policy is not None else None
    return {n.nic for n in h.nics} if h is not None else set()
