"""The vif handlers of the core: vif-online, vif-offline and leave's detaches.

vif-online: the device is checked first (devices.py), then the VM admitted (the authority),
the segment built (converge) and the vif attached with port security (plug). On any refusal
the vif is attached to nothing. The proxy only ever detaches a device it attached, or one it
just verified as the request's vif.
"""
from __future__ import annotations

import time

from xen_tvd.errors import Refused
from xen_tvd.log import log

from . import admission, devices
from .admission import Denied
from .dataplane_port import DataplaneError
from .requests import VifOnline
from .state import Registration, VifRecord


def online(core, req: VifOnline):
    ifname, uuid, mtu = req.ifname, req.uuid, req.mtu
    record = VifRecord(ifname=ifname, tvd="", uuid=uuid, domid=req.domid, devid=req.devid,
                       type=req.type, mac=req.mac,
                       addresses=None if req.addresses is None else list(req.addresses), mtu=mtu)
    with core.lock:
        reg = core.regs.get(uuid)
        # the VM's opt-out (its registration) travels with the vif's port to the dataplane
        record.tx_checksum_offload = reg is None or reg.tx_checksum_offload
        tvd = None
        try:
            if ifname not in core.vifs:   # attached by us already: verified then
                devices.check(core.dataplane.identify(ifname), req,
                              devices.host_nics(core.policy, core.host), core.vif_drivers,
                              core.dataplane.identify)
        except (Denied, DataplaneError) as e:
            # not a vif of this domain: refused without touching the device
            core.audit("denied", record, str(e))
            raise Refused(str(e)) from None
        try:
            tvd = admission.resolve_tvd(ifname, req.devid, req.bridge, reg)
            core.admit(ifname, tvd, uuid, exclude=ifname, new=True)
            others = [v for v in core.vifs.values() if v.ifname != ifname]
            state = core.desired(others, extra_local={tvd})
            core.converge(state)
            seg = state.segment(tvd)
            try:
                record.tvd = tvd
                core.dataplane.plug(record.port(), seg, log_drops=core.log_drops)
            except DataplaneError as e:
                core.applied = None   # re-check the kernel on the next event
                raise Refused(str(e)) from None
        except (Denied, Refused) as e:
            core.fail_closed(ifname)
            record.tvd = tvd or ""
            core.audit("denied", record, str(e))
            raise Refused(str(e)) from None
        core.vifs[ifname] = record
        core.checked[ifname] = time.monotonic()
        core.audit("admitted", record)
        core.save()
    name = reg.name if reg else ""
    given = record.port().mtu_on(seg)
    lowered = {"mtu_lowered_from": mtu} if mtu is not None and mtu > given else {}
    log("info", "vif-online", ifname=ifname, tvd=tvd, uuid=uuid, vm=name, bridge=seg.bridge,
        mtu=given, tx_csum="on" if record.port().tx_csum_on(seg) else "off", **lowered)

    def rollback():
        with core.lock:
            if core.vifs.get(ifname) is not None and core.vifs[ifname].uuid == uuid:
                core.fail_closed(ifname)
                core.vifs.pop(ifname, None)
                core.audit("detached", record, "the hotplug script went away before the answer")
                core.save()
        log("warning", "vif-online-rolled-back", ifname=ifname,
            detail="the hotplug script went away before the answer; vif detached")
    # mtu_lowered_from: the guest asked for more than its TVD carries
    return {"tvd": tvd, "bridge": seg.bridge, "mtu": given, **lowered}, rollback


def offline(core, ifname: str):
    """Detach a vif this proxy attached (idempotent). An interface it does not hold is not
    touched: the request may name any device (issue #16.2)."""
    with core.lock:
        rec = core.vifs.pop(ifname, None)
        err = None
        if rec is not None:
            try:
                core.dataplane.unplug(ifname)
            except DataplaneError as e:
                err = str(e)
            core.checked.pop(ifname, None)
            core.audit("detached", rec, "vif-offline (the domain's vif went away)")
            core.release_segments()
            core.save()
    log("info", "vif-offline", ifname=ifname, tvd=rec.tvd if rec else None, known=rec is not None)
    if err:
        raise Refused(err)
    return {}, None


def leave(core, uuid: str, tvd: str):
    with core.lock:
        reg = core.regs.get(uuid) or Registration(uuid=uuid)
        reg.joined.pop(tvd, None)
        if tvd not in reg.left:
            reg.left.append(tvd)
        core.regs[uuid] = reg
        gone = sorted(v.ifname for v in core.vifs.values() if v.uuid == uuid and v.tvd == tvd)
        errors = []
        for name in gone:
            try:
                core.dataplane.unplug(name)
            except DataplaneError as e:
                errors.append(str(e))
            core.audit("detached", core.vifs[name], f"VM left TVD {tvd}")
            del core.vifs[name]
        # libvirt attached these itself: the proxy cannot detach them (ports.py); the
        # domain hook's check stops the VM at libvirtd's next reconnect
        kept = sorted(p.port for p in core.ports.values() if p.uuid == uuid and p.tvd == tvd)
        core.release_segments()
        core.save()
    log("info", "leave", uuid=uuid, tvd=tvd, detached=",".join(gone),
        libvirt_ports=",".join(kept) or None)
    if errors:
        raise Refused("; ".join(errors))
    return {"detached": gone, "libvirt_ports": kept}, None

