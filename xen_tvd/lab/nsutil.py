"""Idempotent network-namespace plumbing for the lab (pyroute2 only, never `ip` output).

Every helper converges the kernel to what it is asked for and is safe to call again: it
creates what is missing, fixes what differs, and leaves what already matches alone.
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import signal
import socket
import threading

from pyroute2 import NetlinkError, NetNS, netns

NETNS_RUN_DIR = "/run/netns"
# ifalias written on `lo` of every namespace a lab creates: how `down` recognises its own
# namespaces when the state file is gone (a name prefix alone could match another lab).
LAB_MARK_PREFIX = "xen-tvd-lab:"

_sysctl_lock = threading.Lock()


class LabKernelError(Exception):
    """A kernel operation the lab needs failed; str() is a one-line explanation."""


_handles: dict[str, NetNS] | None = None   # open netlink handles while in handles()


def _open(name: str) -> NetNS:
    if not ns_exists(name):
        raise LabKernelError(f"network namespace {name} does not exist")
    return NetNS(name, flags=0)   # flags=0: never create a namespace by accident


@contextlib.contextmanager
def _ns(name: str):
    """A netlink handle inside namespace `name` (reused within a handles() block)."""
    if _handles is None:
        h = _open(name)
        try:
            yield h
        finally:
            h.close()
        return
    h = _handles.get(name)
    if h is None:
        h = _handles[name] = _open(name)
    yield h


@contextlib.contextmanager
def handles():
    """Keep one netlink handle per namespace open for the block (opening one forks)."""
    global _handles
    if _handles is not None:
        yield
        return
    _handles = {}
    try:
        yield
    finally:
        for h in _handles.values():
            with contextlib.suppress(Exception):
                h.close()
        _handles = None


def _forget(name: str) -> None:
    if _handles is not None and name in _handles:
        with contextlib.suppress(Exception):
            _handles.pop(name).close()


def ns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def list_ns() -> list[str]:
    try:
        return sorted(netns.listnetns())
    except FileNotFoundError:
        return []


def ns_exists(name: str) -> bool:
    return os.path.exists(ns_path(name))


def ensure_ns(name: str, mark: str, quiet: bool = True) -> None:
    """Create namespace `name` (if missing), bring `lo` up and stamp it with the lab mark.
    `quiet`: IPv6 off by default (VMs turn it on per NIC); False for the namespaces whose
    settings are the dataplane's (the hosts' routers)."""
    if not ns_exists(name):
        try:
            netns.create(name)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise LabKernelError(f"cannot create network namespace {name}: {e}") from None
    with _ns(name) as ns:
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up", ifalias=LAB_MARK_PREFIX + mark)
    # Quiet namespaces: no IPv6 autoconf/DAD/MLD chatter where nothing asked for IPv6.
    for key in ("net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"):
        if quiet:
            sysctl(name, key, "1", missing_ok=True)


def ns_mark(name: str) -> str | None:
    """The lab mark of namespace `name` ('' when unmarked, None when it cannot be read)."""
    try:
        with _ns(name) as ns:
            lo = ns.get_links(ns.link_lookup(ifname="lo")[0])[0]
            alias = lo.get_attr("IFLA_IFALIAS") or ""
    except Exception:
        return None
    return alias[len(LAB_MARK_PREFIX):] if alias.startswith(LAB_MARK_PREFIX) else ""


def ns_inode(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(ns_path(name))
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in_ns(names: list[str]) -> dict[int, str]:
    """pid -> namespace name, for every process whose network namespace is one of `names`."""
    want = {}
    for n in names:
        ino = ns_inode(n)
        if ino:
            want[ino] = n
    found: dict[int, str] = {}
    if not want:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        hit = want.get((st.st_dev, st.st_ino))
        if hit and int(entry) != os.getpid():
            found[int(entry)] = hit
    return found


def pid_in_ns(pid: int, name: str) -> bool:
    ino = ns_inode(name)
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return False
    return ino is not None and (st.st_dev, st.st_ino) == ino


def kill_pids(pids) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)  # reap when it was our child; never leave a zombie behind


def remove_ns(name: str) -> None:
    _forget(name)
    if not ns_exists(name):
        return
    try:
        netns.remove(name)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise LabKernelError(f"cannot remove network namespace {name}: {e}") from None


@contextlib.contextmanager
def entered(name: str):
    """Run the body with the calling thread inside namespace `name` (sysctl writes)."""
    with _sysctl_lock:
        netns.pushns(name)
        try:
            yield
        finally:
            netns.popns()


def sysctl(name: str, key: str, value: str, missing_ok: bool = False) -> None:
    path = "/proc/sys/" + key.replace(".", "/") if "/" not in key else "/proc/sys/" + key
    with entered(name):
        try:
            with open(path) as f:
                if f.read().strip() == value:
                    return
            with open(path, "w") as f:
                f.write(value)
        except FileNotFoundError:
            if not missing_ok:
                raise LabKernelError(f"{name}: sysctl {key} does not exist") from None


# ---- links -----------------------------------------------------------------------------------

def _link(ns: NetNS, ifname: str):
    idx = ns.link_lookup(ifname=ifname)
    if not idx:
        return None
    return ns.get_links(idx[0])[0]


def link_kind(link) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def ensure_bridge(nsname: str, ifname: str, mtu: int | None = None) -> None:
    """A plain learning bridge with multicast snooping off: a dumb physical switch."""
    with _ns(nsname) as ns:
        link = _link(ns, ifname)
        if link is not None and link_kind(link) != "bridge":
            ns.link("del", index=link["index"])
            link = None
        if link is None:
            ns.link("add", ifname=ifname, kind="bridge", br_mcast_snooping=0)
            link = _link(ns, ifname)
        else:
            ns.link("set", index=link["index"], kind="bridge", br_mcast_snooping=0)
        kw = {"state": "up"}
        if mtu:
            kw["mtu"] = mtu
        ns.link("set", index=link["index"], **kw)


def _peer_ok(a, b) -> bool:
    return (link_kind(a) == "veth" and link_kind(b) == "veth"
            and a.get_attr("IFLA_LINK") == b["index"] and b.get_attr("IFLA_LINK") == a["index"])


def ensure_veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> bool:
    """A veth pair if_a@ns_a <-> if_b@ns_b. Returns True when it had to be (re)created.

    A half-pair (crash between steps, or one end's namespace recreated) is torn down and
    rebuilt; a correct pair is left alone so its addresses and bridge port survive.
    """
    with _ns(ns_a) as na, _ns(ns_b) as nb:
        la, lb = _link(na, if_a), _link(nb, if_b)
        if la is not None and lb is not None and _peer_ok(la, lb):
            return False
        for ns, link in ((na, la), (nb, lb)):
            if link is not None:
                with contextlib.suppress(NetlinkError):
                    ns.link("del", index=link["index"])
        if ns_a == ns_b:
            na.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b})
        else:
            na.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": ns_b})
    return True


def set_link(nsname: str, ifname: str, *, mtu: int | None = None, up: bool | None = None,
             master: str | None = None, address: str | None = None,
             ifalias: str | None = None) -> None:
    with _ns(nsname) as ns:
        link = _link(ns, ifname)
        if link is None:
            raise LabKernelError(f"{nsname}: interface {ifname} is missing")
        kw: dict = {}
        if mtu is not None and link.get_attr("IFLA_MTU") != mtu:
            kw["mtu"] = mtu
        if address is not None and (link.get_attr("IFLA_ADDRESS") or "").lower() != address.lower():
            kw["address"] = address
        if ifalias is not None and link.get_attr("IFLA_IFALIAS") != ifalias:
            kw["ifalias"] = ifalias
        if master is not None:
            midx = ns.link_lookup(ifname=master)
            if not midx:
                raise LabKernelError(f"{nsname}: bridge {master} is missing")
            if link.get_attr("IFLA_MASTER") != midx[0]:
                kw["master"] = midx[0]
        if kw:
            ns.link("set", index=link["index"], **kw)
        if up is not None:
            ns.link("set", index=link["index"], state="up" if up else "down")


IFA_F_NODAD = 0x02


def ensure_addresses(nsname: str, ifname: str, cidrs: list[str]) -> None:
    """Exactly these IPv4 and global IPv6 addresses on ifname (extra ones are removed; the
    kernel's link-local IPv6 address stays). IPv6 ones skip DAD: the lab assigns them."""
    want = {str(ipaddress.ip_interface(c)) for c in cidrs}
    with _ns(nsname) as ns:
        idx = ns.link_lookup(ifname=ifname)
        if not idx:
            raise LabKernelError(f"{nsname}: interface {ifname} is missing")
        have = set()
        for family in (2, 10):
            for a in ns.get_addr(family=family, index=idx[0]):
                ip = ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
                c = f"{ip}/{a['prefixlen']}"
                if c in want:
                    have.add(c)
                elif not ip.is_link_local:
                    ns.addr("del", index=idx[0], address=str(ip), prefixlen=a["prefixlen"])
        for c in sorted(want - have):
            ip = ipaddress.ip_interface(c)
            ns.addr("add", index=idx[0], address=str(ip.ip), prefixlen=ip.network.prefixlen,
                    **({"flags": IFA_F_NODAD} if ip.version == 6 else {}))


def enable_ipv6(nsname: str, ifname: str) -> None:
    """IPv6 on one NIC of a quiet namespace (ensure_ns turns it off): no autoconf, no RAs."""
    for key, val in (("disable_ipv6", "0"), ("accept_ra", "0"), ("autoconf", "0")):
        sysctl(nsname, f"net/ipv6/conf/{ifname}/{key}", val)


def ensure_route(nsname: str, dst: str, *, gateway: str | None = None, dev: str | None = None,
                 table: int | None = None, prefsrc: str | None = None) -> None:
    net = ipaddress.ip_network(dst, strict=False)
    kw: dict = {"dst": str(net.network_address), "dst_len": net.prefixlen,
                "family": 10 if net.version == 6 else 2}
    with _ns(nsname) as ns:
        if gateway:
            kw["gateway"] = gateway
        if dev:
            kw["oif"] = ns.link_lookup(ifname=dev)[0]
        if table:
            kw["table"] = table
        if prefsrc:
            kw["prefsrc"] = prefsrc
        if not gateway:
            kw["scope"] = 253  # link
        ns.route("replace", **kw)


def ensure_rule(nsname: str, src: str, table: int, priority: int) -> None:
    with _ns(nsname) as ns:
        for r in ns.get_rules(family=2):
            if r.get_attr("FRA_PRIORITY") == priority:
                if r.get_attr("FRA_TABLE") == table and r.get_attr("FRA_SRC") == src:
                    return
                ns.rule("del", family=2, priority=priority)
        ns.rule("add", family=2, src=src, src_len=32, table=table, priority=priority)


def links(nsname: str) -> list:
    with _ns(nsname) as ns:
        return list(ns.get_links())


def delete_link(nsname: str, ifname: str) -> None:
    with _ns(nsname) as ns:
        idx = ns.link_lookup(ifname=ifname)
        if idx:
            with contextlib.suppress(NetlinkError):
                ns.link("del", index=idx[0])


def tcp_listening(ns: str, ip: str, port: int) -> bool:
    """Does something in namespace `ns` accept TCP connections on ip:port (0.5 s bound)?"""
    with entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        return s.connect_ex((ip, port)) == 0
    finally:
        s.close()
