"""Tier-3 scenarios `checksum` (in CI) and `checksum-mixed` (opt-in): TCP and UDP through a
routing domU, with vif tx checksum offload as shipped (on) and with the TVDs' opt-out
(`tx-checksum-offload: false`).

Why (issue #13 point 1, docs/policy.md `tx-checksum-offload`): the paper turned vif tx checksum
offload off because of a 2007 netfront/netback bug, VMs routed through a firewall VM on one host
saw invalid TCP checksums. This is that topology on Debian's Xen 4.17 with Linux 6.1 netfront
and netback, for each setting a set of three PV domUs (the tier's "tools" initramfs: busybox,
perl, tvd_testing/xen_guest_traffic.pl):

    src (TVD A) --- vif --- rtr eth0 (TVD A) | rtr eth1 (TVD B) --- vif --- dst (TVD B)
    10.2X.1.2                  10.2X.1.1        10.2X.2.1                      10.2X.2.2

rtr forwards (net.ipv4.ip_forward=1); src and dst route each other's subnet through it, and
since A and B are two TVDs (a shared-membership set) no frame gets from src to dst any other
way. src sends 4 MiB of random data over TCP (sha256 on both ends), then UDP datagrams of 13
sizes from 17 to 65507 bytes (one full frame, one byte more, IP fragments up to the largest
datagram), each carrying its sequence number, length and a checksum of its content, checked
byte for byte by dst and resent until dst acknowledges an intact copy. Checked per setting:
the four vifs have tx checksum offload as their TVD says; every payload arrives intact; rtr
forwarded it; the checksum error counters (/proc/net/snmp: Tcp, Udp, UdpLite, Icmp
InCsumErrors) of dst, src and rtr are 0. The figures (seconds, resends, every counter of
/proc/net/snmp and /proc/net/netstat at the end) go into results.json.

Settings: `on` (A, B at the default) and `off` (both `false`) run side by side in `checksum`;
`mixed` (A on, B `false`) in `checksum-mixed`, opt-in for its time. What each verifies at the
receiver: with offload on, netback hands frames to the guest with the checksum still blank
(XEN_NETRXF_csum_blank), so no stack on the path computes an unfragmented packet's L4 checksum
and only the payload checks can find corruption; with offload off, dom0 completes each
checksum before the frame reaches the guest and the guest's kernel verifies it (InCsumErrors
counts a bad one). So `mixed` is the one where what the router forwards with offload on
(checksum blank, GSO) is completed by dom0 and verified by dst's kernel: the 2007 bug's path.
IP fragments are checksummed by src and verified by dst after reassembly in every setting.
"""
from __future__ import annotations

import concurrent.futures as cf
import re
import time

from tvd_testing.xen_scenarios.lifecycle import gone, on_tvd
from tvd_testing.xenscenario import scenario
from tvd_testing.xentier import dlog, sh

TCP_BYTES = 4 << 20
UDP_COUNT = 65                  # five rounds of the 13 sizes in xen_guest_traffic.pl
# setting -> (TVD of src and rtr's eth0, TVD of rtr's eth1 and dst, subnet prefix)
SETS = {"on": ("csum-a", "csum-b", "10.20"),
        "off": ("nocsum-a", "nocsum-b", "10.21"),
        "mixed": ("csum-a", "nocsum-b", "10.22")}
# each TVD's vif tx checksum offload in the tier's policy (xentier.POLICY)
OFFLOAD_ON = {"csum-a": True, "csum-b": True, "nocsum-a": False, "nocsum-b": False}
MEMORY = 128                    # MB per domU: six run next to positive's three (r1-r3: enough)
CSUM_COUNTERS = (("Tcp", "InCsumErrors"), ("Udp", "InCsumErrors"), ("UdpLite", "InCsumErrors"),
                 ("Icmp", "InCsumErrors"))
WAIT_TRAFFIC = 600
CREATE_AT_ONCE = 3              # r1: six creates three at a time 35 s; r3: nine at once 65 s


def checks(sets) -> tuple[str, ...]:
    return tuple(f"{c}-{s}" for s in sets for c in (
        "create", "vifs-on-tvds", "vif-tx-csum", "tcp-intact", "udp-intact", "forwarded-by-router",
        "no-csum-errors", "destroy-cleans-vifs"))


def guests(setting: str) -> dict[str, tuple[list[str], str]]:
    """name -> (xl vif specs, kernel command line) of one setting's three domUs."""
    a, b, net = SETS[setting]
    mac = "00:16:3e:7a:%02x:%02x"
    base = 4 + list(SETS).index(setting)
    src, r0, r1, dst = f"{net}.1.2", f"{net}.1.1", f"{net}.2.1", f"{net}.2.2"
    return {
        f"cs{setting}-rtr": ([f"mac={mac % (base, 1)}, bridge=tvd:{a}, script=vif-tvd",
                              f"mac={mac % (base, 2)}, bridge=tvd:{b}, script=vif-tvd"],
                             f"tvd_ip={r0} tvd_ip1={r1} tvd_forward=1 tvd_counters=1 tvd_peers={src},{dst}"),
        f"cs{setting}-dst": ([f"mac={mac % (base, 3)}, bridge=tvd:{b}, script=vif-tvd"],
                             f"tvd_ip={dst} tvd_via={net}.1.0/24,{r1} tvd_traffic=recv tvd_peers={r1}"),
        f"cs{setting}-src": ([f"mac={mac % (base, 4)}, bridge=tvd:{a}, script=vif-tvd"],
                             f"tvd_ip={src} tvd_via={net}.2.0/24,{r0} "
                             f"tvd_traffic=send:{dst}:{TCP_BYTES}:{UDP_COUNT} tvd_peers={r0}"),
    }


def kv(line: str, prefix: str) -> dict[str, str] | None:
    """`prefix k=v k=v ...` -> {k: v}; None if the line does not start with prefix."""
    if not line.startswith(prefix + " "):
        return None
    return dict(f.split("=", 1) for f in line[len(prefix) + 1:].split() if "=" in f)


def last(text: str, prefix: str) -> dict[str, str] | None:
    """kv() of the last line of `text` starting with prefix."""
    got = None
    for line in text.splitlines():
        d = kv(line.strip(), prefix)
        if d is not None:
            got = d
    return got


def snmp(text: str, tag: str) -> dict[str, dict[str, int]]:
    """The `@@snmp TAG PROTO k=v ...` lines of `text` with tag `tag` -> {PROTO: {k: int}}."""
    rows = []
    for line in text.splitlines():
        f = line.strip().split()
        if len(f) >= 3 and f[0] == "@@snmp":
            rows.append(f)
    out: dict[str, dict[str, int]] = {}
    for f in rows:
        if f[1] == tag:
            out[f[2]] = {k: int(v) for k, v in (x.split("=", 1) for x in f[3:] if "=" in x)
                         if re.fullmatch(r"-?\d+", v)}
    return out


def complete_ticks(text: str) -> list[str]:
    """Tags of the `@@snmp tick-N` dumps printed whole (UdpLite is the last protocol)."""
    return [f[1] for f in (line.strip().split() for line in text.splitlines())
            if len(f) >= 3 and f[0] == "@@snmp" and f[1].startswith("tick-") and f[2] == "UdpLite"]


def vif_states(d, vifs: dict[str, tuple[int, int]]) -> dict[str, dict]:
    """lifecycle.vif_state (+ the backend's state) of several vifs from one look at the links
    and the proxy: each look costs seconds in dom0 under emulation."""
    links, pv = d.links(), d.proxy_vifs()
    out = {}
    for k, (dom, dev) in vifs.items():
        ifname = f"vif{dom}.{dev}"
        link, p = links.get(ifname), pv.get(ifname)
        be = f"/local/domain/0/backend/vif/{dom}/{dev}"
        out[k] = {"ifname": ifname, "netdev": link is not None, "master": (link or {}).get("master"),
                  "hotplug": d.xs_read(f"{be}/hotplug-status"), "proxy_tvd": p.get("tvd") if p else None,
                  "backend": d.xs_read(f"{be}/state")}
    return out


def wait_vifs(d, vifs, ok, timeout: float) -> dict[str, dict]:
    t = time.monotonic()
    while True:
        st = vif_states(d, vifs)
        if all(ok(k, v) for k, v in st.items()) or time.monotonic() - t > timeout:
            return st
        time.sleep(1)


def netdev(text: str, tag: str) -> dict[str, dict[str, int]]:
    out = {}
    for line in text.splitlines():
        f = line.strip().split()
        if len(f) >= 3 and f[0] == "@@netdev" and f[1] == tag:
            out[f[2]] = {k: int(v) for k, v in (x.split("=", 1) for x in f[3:] if "=" in x)}
    return out


def csum_errors(counters: dict[str, dict[str, int]]) -> dict[str, int | None]:
    return {f"{p} {c}": counters.get(p, {}).get(c) for p, c in CSUM_COUNTERS}


def tx_csum(d, ifname: str, want_on: bool) -> tuple[bool, dict]:
    """As positive's tx-csum-after-frontend-connect: on = tx-checksumming on; off = every
    changeable tx-checksum-* feature off and not `[requested on]`."""
    offl = d.offloads(ifname)
    got = {k: v for k, v in offl.items() if k.startswith("tx-checksum") and not v.endswith("[fixed]")}
    tso = {k: offl.get(k) for k in ("tcp-segmentation-offload", "generic-segmentation-offload")}
    ok = (offl.get("tx-checksumming", "").startswith("on") if want_on
          else bool(got) and all(v.startswith("off") and "requested on" not in v for v in got.values()))
    return ok, {**got, **tso}


@scenario("checksum", checks=checks(("on",)))
def checksum(d, sc):
    """The shipped default, offload on on every vif of the path (in CI)."""
    run_sets(d, sc, ("on",))


@scenario("checksum-optout", checks=checks(("off", "mixed")))
def checksum_optout(d, sc):
    """The TVDs' opt-out: off on every vif of the path, and off only where the receiver is,
    so dom0 completes the checksums of what the router forwarded with offload on and the
    receiver's kernel verifies them (opt-in: six more domUs)."""
    run_sets(d, sc, ("off", "mixed"))


def run_sets(d, sc, sets) -> None:
    t0 = time.monotonic()
    cfgs = {}
    for s in sets:
        for n, (vifs, cmdline) in guests(s).items():
            cfgs[n] = d.write_cfg(n, vifs, cmdline, memory=MEMORY, tools=True)
    # routers first (their two vifs create the four TVD vSwitches), CREATE_AT_ONCE at a time
    order = [n for role in ("rtr", "dst", "src") for n in cfgs if n.endswith(role)]
    with cf.ThreadPoolExecutor(CREATE_AT_ONCE) as ex:
        futs = {n: ex.submit(_create, cfgs[n]) for n in order}
        created = {n: f.result() for n, f in futs.items()}
    sc.facts["create_seconds"] = round(time.monotonic() - t0, 1)
    sc.facts["create_seconds_each"] = {n: v[2] for n, v in created.items()}
    created = {n: v[:2] for n, v in created.items()}
    for n, (rc, out) in created.items():
        dlog(f"create {n}: rc={rc}\n{out}")
    doms = d.domains()
    for s in sets:
        names = [n for n in cfgs if n.startswith(f"cs{s}-")]
        sc.check(f"create-{s}", all(created[n][0] == 0 and n in doms for n in names),
                 {n: created[n] for n in names})
    try:
        with cf.ThreadPoolExecutor(len(sets)) as ex:
            for f in [ex.submit(_one_setting, d, sc, s, doms, t0) for s in sets]:
                f.result()
    finally:
        with cf.ThreadPoolExecutor(len(sets)) as ex:
            for f in [ex.submit(_destroy, d, sc, s, doms) for s in sets]:
                f.result()
    sc.facts["scenario_seconds"] = round(time.monotonic() - t0, 1)


def _create(cfg) -> tuple[int, str, float]:
    t = time.monotonic()
    rc, out = sh(["xl", "create", str(cfg)], 300)
    return rc, out, round(time.monotonic() - t, 1)


def _one_setting(d, sc, s: str, doms: dict, t0: float) -> None:
    a, b, _ = SETS[s]
    rtr, dst, src = (f"cs{s}-{r}" for r in ("rtr", "dst", "src"))
    if not all(n in doms for n in (rtr, dst, src)):
        return
    vifs = {"src": (doms[src], 0), "rtr.0": (doms[rtr], 0), "rtr.1": (doms[rtr], 1), "dst": (doms[dst], 0)}
    tvd = {"src": a, "rtr.0": a, "rtr.1": b, "dst": b}
    st = wait_vifs(d, vifs, lambda k, v: on_tvd(v, tvd[k]), 120)
    sc.facts[f"vifs_{s}"] = st
    sc.check(f"vifs-on-tvds-{s}", all(on_tvd(v, tvd[k]) for k, v in st.items()), st)
    # the traffic ends with `@@csum receiver-done` / `sender-done` on the consoles
    t = time.monotonic()
    txt = {}
    while time.monotonic() - t < WAIT_TRAFFIC:
        txt = {n: d.console_text(n) for n in (rtr, dst, src)}
        if "@@csum receiver-done" in txt[dst] and "@@csum sender-done" in txt[src]:
            break
        time.sleep(2)
    ticks_at_end = len(complete_ticks(txt[rtr]))
    sc.facts[f"traffic_wait_seconds_{s}"] = round(time.monotonic() - t, 1)
    sc.facts[f"traffic_done_after_seconds_{s}"] = round(time.monotonic() - t0, 1)
    # the vifs' features now that every frontend has long connected
    ifs = {"src": f"vif{doms[src]}.0", "rtr.0": f"vif{doms[rtr]}.0", "rtr.1": f"vif{doms[rtr]}.1",
           "dst": f"vif{doms[dst]}.0"}
    want = {"src": OFFLOAD_ON[a], "rtr.0": OFFLOAD_ON[a], "rtr.1": OFFLOAD_ON[b], "dst": OFFLOAD_ON[b]}
    feats = {k: tx_csum(d, i, want[k]) for k, i in ifs.items()}
    sc.facts[f"vif_offloads_{s}"] = {f"{k} {ifs[k]} (want {'on' if want[k] else 'off'})": v[1]
                                     for k, v in feats.items()}
    sc.check(f"vif-tx-csum-{s}", all(ok for ok, _ in feats.values()), sc.facts[f"vif_offloads_{s}"])
    sc.facts[f"dom0_vif_stats_{s}"] = {i: sh(["ip", "-s", "-s", "link", "show", "dev", i], 30)[1] for i in ifs.values()}
    lines = {n: [l.strip() for l in txt[n].splitlines()
                 if l.strip().startswith(("@@csum", "@@guest")) or "tvd-traffic" in l] for n in (dst, src)}
    sc.facts[f"traffic_lines_{s}"] = lines
    # TCP: the same bytes (length and sha256) on both ends
    tx, rx = last(txt[src], "@@csum tcp-tx-payload"), last(txt[dst], "@@csum tcp-rx-payload")
    ttx, trx = last(txt[src], "@@csum tcp-tx"), last(txt[dst], "@@csum tcp-rx")
    sc.facts[f"tcp_{s}"] = {"sent": tx, "received": rx, "sender": ttx, "receiver": trx}
    sc.check(f"tcp-intact-{s}", bool(tx and rx and ttx) and tx["bytes"] == str(TCP_BYTES)
             and rx == tx and ttx["bytes"] == str(TCP_BYTES), sc.facts[f"tcp_{s}"])
    # UDP: every datagram acknowledged as intact, none bad, the bytes add up
    utx, urx = last(txt[src], "@@csum udp-tx"), last(txt[dst], "@@csum udp-rx")
    sc.facts[f"udp_{s}"] = {"sender": utx, "receiver": urx}
    sc.check(f"udp-intact-{s}", bool(utx and urx) and utx["acked"] == str(UDP_COUNT) and utx["unacked"] == "0"
             and urx["unique"] == str(UDP_COUNT) and urx["bad"] == "0" and urx["bytes"] == utx["bytes"],
             sc.facts[f"udp_{s}"])
    # the router's counters (tvd_counters=1: printed every two seconds): a dump that began
    # after the traffic ended
    t = time.monotonic()
    while time.monotonic() - t < 60 and len(complete_ticks(d.console_text(rtr))) <= ticks_at_end + 1:
        time.sleep(1)
    ticks = complete_ticks(d.console_text(rtr))
    c = {"dst": snmp(txt[dst], "final"), "src": snmp(txt[src], "final"),
         "rtr": snmp(d.console_text(rtr), ticks[-1] if len(ticks) > ticks_at_end + 1 else "none")}
    sc.facts[f"counters_{s}"] = c
    sc.facts[f"netdev_{s}"] = {"dst": netdev(txt[dst], "final"), "src": netdev(txt[src], "final")}
    fwd = c["rtr"].get("Ip", {}).get("ForwDatagrams", 0)
    sc.check(f"forwarded-by-router-{s}", fwd >= UDP_COUNT + TCP_BYTES // 65536 and "forwarding=1" in d.console_text(rtr),
             f"{rtr} Ip ForwDatagrams={fwd}")
    errs = {n: csum_errors(c[n]) for n in c}
    sc.facts[f"csum_errors_{s}"] = errs
    sc.check(f"no-csum-errors-{s}", all(v == 0 for e in errs.values() for v in e.values()), errs)


def _destroy(d, sc, s: str, doms: dict) -> None:
    names = [f"cs{s}-{r}" for r in ("src", "dst", "rtr") if f"cs{s}-{r}" in doms]
    with cf.ThreadPoolExecutor(3) as ex:
        outs = dict(zip(names, ex.map(lambda n: sh(["xl", "destroy", n], 180), names)))
    vifs = {f"{n}.0": (doms[n], 0) for n in names}
    if f"cs{s}-rtr" in doms:
        vifs[f"cs{s}-rtr.1"] = (doms[f"cs{s}-rtr"], 1)
    left = wait_vifs(d, vifs, lambda k, v: gone(v), 60)
    sc.check(f"destroy-cleans-vifs-{s}", len(names) == 3 and all(rc == 0 for rc, _ in outs.values())
             and all(gone(v) for v in left.values()), f"{outs}; {left}")
