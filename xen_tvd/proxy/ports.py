"""libvirt network ports: the proxy side of the libvirt network hook and of `reconnect`.

libvirt attaches a NIC of type='network' (at start, or hot-plugged with attach-device) to the
network's bridge itself: qemu creates a tap, libxl's default vif-bridge script plugs the vif.
Before that it runs the network hook's `port-created`, and a failing hook fails the domain
start or the attach; our hook (xen_tvd.libvirt.network_hook) asks here first:

  online   the port's owner is admitted into the network's TVD as a vif would be (the TVD
           exists, the VM has not left it, this host may carry it, the VM satisfies M(t) of
           all its TVDs together), then the TVD's segment is built (vSwitch, uplink, MTU from
           the plan: libvirt gives the tap the bridge's MTU) and the port is recorded by
           libvirt's port UUID. A port on a network outside every TVD is refused when its VM
           is in one (a path out of the TVD), and so is a network that points at a TVD's
           vSwitch without being that TVD's network.
  offline  forget it (idempotent); its segment lingers like a vif's.
  check    re-admit a running VM into the TVDs its NICs are in, changing nothing: the domain
           hook's `reconnect` (libvirtd restarted while the VM ran).

The proxy cannot detach a libvirt port: it never learns the name libvirt gives the interface.
A revoked port stays until libvirt removes it; `check` refusing it at the next libvirtd
reconnect makes libvirt stop the VM (docs/libvirt.md).
"""
from __future__ import annotations

from xen_tvd.desired.names import bridge_name
from xen_tvd.log import log

from . import admission
from .admission import Denied
from .state import PortRecord


def _what(rec: PortRecord) -> str:
    return (f"libvirt port {rec.mac or rec.port} of VM {rec.name or rec.uuid} "
            f"(network {rec.network or '?'})")


def online(proxy, rec: PortRecord, bridge: str | None):
    """rec.tvd == "": the port's network is in no TVD. Returns (response, rollback).
    libvirtd runs port-created again for every port when it restarts: a port already recorded
    is re-admitted (not a new admission, so the master's offline rule does not apply), and a
    refusal leaves its record alone, as libvirt keeps the port (`check` decides the VM's fate)."""
    with proxy.lock:
        known = rec.port in proxy.ports
        try:
            if not rec.tvd:
                _outside_every_tvd(proxy, rec, bridge)
                return {"tvd": None}, None
            proxy.admit(_what(rec), rec.tvd, rec.uuid, new=not known,
                         exclude_port=rec.port)
            state = proxy.desired(proxy.vifs.values(), extra_local={rec.tvd})
            seg = state.segment(rec.tvd)
            if bridge and bridge != seg.bridge:
                raise Denied(f"{_what(rec)}: the network attaches to bridge {bridge}, but TVD "
                             f"'{rec.tvd}''s vSwitch is {seg.bridge}; redefine the network "
                             f"(tvdctl libvirt networks POLICY --define)")
            proxy.converge(state)
        except Exception as e:   # Denied, or Refused by the plan or the dataplane
            proxy.audit("denied", None, str(e), vm=rec.uuid, tvd=rec.tvd or None, port=rec.port,
                        name=rec.name or None)
            raise
        proxy.ports[rec.port] = rec
        if not known:
            proxy.audit("admitted", None, vm=rec.uuid, tvd=rec.tvd, port=rec.port,
                        name=rec.name or None)
        proxy.save()
    log("info", "port-online", port=rec.port, tvd=rec.tvd, uuid=rec.uuid, vm=rec.name,
        mac=rec.mac, network=rec.network, bridge=seg.bridge, mtu=seg.mtu, again=known)

    def rollback():   # the hook died before our answer: libvirt failed the port creation
        if known:
            return
        with proxy.lock:
            if proxy.ports.get(rec.port) is rec:
                del proxy.ports[rec.port]
                proxy.release_segments()
                proxy.save()
        log("warning", "port-online-rolled-back", port=rec.port,
            detail="the network hook went away before the answer")
    return {"tvd": rec.tvd, "bridge": seg.bridge, "mtu": seg.mtu}, rollback


def _outside_every_tvd(proxy, rec: PortRecord, bridge: str | None) -> None:
    for t in sorted(proxy.policy.tvds if proxy.policy else ()):
        if bridge == bridge_name(t):
            raise Denied(f"{_what(rec)}: the network attaches to bridge {bridge}, TVD '{t}''s "
                         f"vSwitch, but is not a TVD network (no xen-tvd metadata); use the "
                         f"network tvdctl libvirt networks defines for '{t}'")
    tvds = admission.vm_tvds(rec.uuid, proxy.regs.get(rec.uuid), proxy.vifs, ports=proxy.ports,
                             exclude_port=rec.port)
    if tvds:
        raise Denied(f"{_what(rec)}: the VM is in TVD {', '.join(sorted(tvds))} and this network "
                     f"is in none; a NIC there would be a path out of the TVD that no policy governs")


def offline(proxy, port: str):
    with proxy.lock:
        rec = proxy.ports.pop(port, None)
        if rec is not None:
            proxy.audit("detached", None, "libvirt deleted the port", vm=rec.uuid, tvd=rec.tvd,
                        port=port, name=rec.name or None)
            proxy.release_segments()
            proxy.save()
    log("info", "port-offline", port=port, tvd=rec.tvd if rec else None, known=rec is not None)
    return {}, None


def check(proxy, uuid: str, tvds: list[str], name: str):
    """Would VM `uuid` be admitted into all of `tvds` (and the TVDs the proxy knows it in) now?"""
    with proxy.lock:
        reg = proxy.regs.get(uuid)
        what = f"VM {name or (reg.name if reg else '') or uuid} (running, re-checked)"
        try:
            for t in sorted(set(tvds)):
                proxy.admit(what, t, uuid, also=set(tvds))
        except Denied as e:
            proxy.audit("denied", None, str(e), vm=uuid, name=name or None)
            raise
    log("info", "check", uuid=uuid, tvds=",".join(sorted(set(tvds))))
    return {}, None


def recheck_logged(proxy) -> None:
    """At start and reload, under the lock: say which recorded ports the policy no longer
    admits. They are kept: libvirt's tap is still on the vSwitch (see the module doc)."""
    for rec in sorted(proxy.ports.values(), key=lambda r: r.port):
        try:
            proxy.admit(_what(rec), rec.tvd, rec.uuid, exclude_port=rec.port)
        except Denied as e:
            log("warning", "libvirt-port-not-admitted", port=rec.port, tvd=rec.tvd, uuid=rec.uuid,
                error=str(e), detail="attached by libvirt, which the proxy cannot undo; the "
                "domain hook refuses the VM at its next start or libvirtd reconnect")
            proxy.audit("denied", None, str(e), vm=rec.uuid, tvd=rec.tvd, port=rec.port)
