"""`tvdctl lab up|verify|status|exec|down SPEC` (also `python3 -m xen_tvd.lab ...`).

Exit codes: 0 ok; 1 invalid spec/policy, failed step, or verify mismatch; 2 usage error or
unreadable file. Errors are one line each (`FILE:LINE:COL: error: ...` where a place is known).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `lab` sub-command to a parent's subparsers; dispatch with run(args)."""
    lab = subparsers.add_parser(
        "lab", help="network-namespace lab of Dom0 hosts and VMs (docs/lab.md)",
        description="Build, probe and remove a multi-host TVD lab in network namespaces.")
    lab.set_defaults(func=run, lab_cmd=None)
    sub = lab.add_subparsers(dest="lab_cmd", metavar="{up,verify,status,exec,down}")
    p = sub.add_parser("up", help="build or repair the lab (idempotent)")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true", help="timings and errors as JSON")
    p = sub.add_parser("verify", help="measure the reachability matrix against the policy")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds a probe waits for an answer (default 2)")
    p = sub.add_parser("status", help="namespaces, vSwitches and vifs, read from the kernel")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("exec", help="run a command inside a VM: exec SPEC VM -- CMD...")
    p.add_argument("spec")
    p.add_argument("vm")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = sub.add_parser("down", help="remove every namespace, device and process of the lab")
    p.add_argument("spec", nargs="?")
    p.add_argument("--name", help="lab name, when the spec file is gone")
    return lab


def _err(msg: str) -> None:
    for line in str(msg).splitlines():
        print(line if ": error: " in line or line.startswith("error:") else f"error: {line}",
              file=sys.stderr)


def _load(spec_path: str):
    from xen_tvd.lab.spec import SpecInvalid, SpecUnreadable, load_lab
    try:
        return load_lab(spec_path), None
    except SpecUnreadable as e:
        _err(str(e))
        return None, EXIT_USAGE
    except SpecInvalid as e:
        print(str(e), file=sys.stderr)
        return None, EXIT_FAIL


def run(args) -> int:
    cmd = getattr(args, "lab_cmd", None)
    if not cmd:
        _err("tvdctl lab: give a sub-command: up, verify, status, exec or down")
        return EXIT_USAGE
    loaded = None
    if cmd != "down":
        loaded, rc = _load(args.spec)   # a broken spec is reported before anything else
        if loaded is None:
            return rc
    if os.geteuid() != 0:
        _err("tvdctl lab needs root (it creates network namespaces)")
        return EXIT_USAGE
    from xen_tvd.lab import lab as L
    from xen_tvd.lab.nsutil import LabKernelError
    try:
        if cmd == "down":
            return _down(args, L)
        spec, policy = loaded
        if cmd == "up":
            return _up(args, L, spec, policy)
        if cmd == "status":
            return _status(args, L, spec)
        if cmd == "exec":
            argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not argv:
                _err("tvdctl lab exec SPEC VM -- CMD...: no command given")
                return EXIT_USAGE
            return L.exec_in(spec.name, args.vm, argv)
        if cmd == "verify":
            return _verify(args, L, spec, policy)
    except (L.LabError, LabKernelError) as e:
        _err(str(e))
        return EXIT_FAIL
    except KeyboardInterrupt:
        _err("interrupted; rerun the same command (every lab operation is idempotent)")
        return EXIT_FAIL
    _err(f"unknown lab sub-command {cmd}")
    return EXIT_USAGE


def _up(args, L, spec, policy) -> int:
    from xen_tvd.lab.topology import TopologyError
    try:
        rep = L.up(spec, policy, log=lambda s: print(s, file=sys.stderr))
    except TopologyError as e:
        print(str(e), file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps({"name": spec.name, "ok": not rep.errors, "errors": rep.errors,
                          "timings": rep.timings}, indent=1))
    else:
        for e in rep.errors:
            _err(e)
        t = rep.timings
        print(f"lab {spec.name}: {'up' if not rep.errors else 'DEGRADED'} in {t['total']:.2f} s "
              f"({len(spec.vms)} VMs; " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()
                                                    if k != "total") + ")")
    return EXIT_FAIL if rep.errors else EXIT_OK


def _down(args, L) -> int:
    name = args.name
    if not name:
        if not args.spec:
            _err("tvdctl lab down SPEC (or --name NAME)")
            return EXIT_USAGE
        from xen_tvd.lab.spec import SpecInvalid, SpecUnreadable, default_name, load_lab
        try:
            name = load_lab(args.spec)[0].name
        except (SpecUnreadable, SpecInvalid):
            # the spec (or its policy) is broken or gone: its name is still in the file
            name = _name_only(args.spec)
            if name is None:
                name = default_name(args.spec)
    removed = L.down(name)
    print(f"lab {name}: down ({len(removed)} namespace(s) removed)")
    return EXIT_OK


def _name_only(path: str) -> str | None:
    import yaml
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
        n = doc.get("name") if isinstance(doc, dict) else None
        return n if isinstance(n, str) else None
    except Exception:
        return None


def _status(args, L, spec) -> int:
    from xen_tvd.lab.status import status
    st = status(spec.name)
    if args.json:
        print(json.dumps(st, indent=1))
        return EXIT_OK
    print(f"lab {st['name']}: {st['status']}   spec {st['spec']}   policy {st['policy']}")
    missing = [n["name"] for n in st["namespaces"] if not n["present"]]
    print(f"namespaces: {len(st['namespaces'])}" + (f" (MISSING: {', '.join(missing)})"
                                                    if missing else ""))
    for h, he in st["hosts"].items():
        nics = ", ".join(f"{n['name']} {n['address']} [{n['network']}]" for n in he["nics"])
        print(f"host {h} ({he['namespace']}): {nics}")
        for vs in he["vswitches"]:
            ports = ", ".join(p["name"] + (f" vni {p['vni']}" if p.get("vni") else "")
                              for p in vs["ports"])
            print(f"  vswitch {vs['name']} mtu {vs['mtu']} {vs['state']}: {ports}")
        for v in he["vifs"]:
            where = v.get("bridge") or "NOT ATTACHED"
            print(f"  vif {v['name']:<9} vm {v['vm']:<6} tvd {v['tvd']:<8} -> {where:<10} "
                  f"mtu {v.get('mtu')}")
        if "drops" in he:
            from xen_tvd.lab.drops import render
            print(f"  {render(he['drops'])}")
    for vm, ve in st["vms"].items():
        nics = ", ".join(f"{n['name']} {n['address']} ({n['tvd']}, mtu {n['mtu']})"
                         for n in ve["nics"])
        lis = "listener ok" if ve["listener_alive"] else "LISTENER DOWN"
        print(f"vm {vm} on {ve['host']} domid {ve['domid']}: {nics}; {lis}")
    if st.get("control"):
        from xen_tvd.lab.status import render_status
        print("\n".join(render_status(st["control"])))
    for e in st["errors"]:
        print(f"error: {e}")
    return EXIT_OK


def _verify(args, L, spec, policy) -> int:
    from xen_tvd.lab import verify as V
    from xen_tvd.lab.state import require_state, topology_from_json
    state = require_state(spec.name)
    topo = topology_from_json(state["topology"])
    want = {(v, n.devid, n.tvd, n.address) for v, vm in spec.vms.items() for n in vm.nics}
    have = {(n.vm, n.devid, n.tvd, n.address) for n in topo.nics()}
    if want != have:
        _err(f"lab {spec.name} was built from a different spec; rerun `tvdctl lab up {args.spec}`")
        return EXIT_FAIL
    from xen_tvd.lab import verify_admissions
    from xen_tvd.lab.master import denied_vms
    master = spec.control == "master"
    m = V.measure(topo, policy, timeout=args.timeout, denied=frozenset(denied_vms(spec)))
    # master mode: also the proxies' admissions and the master's audit
    lines, problems = verify_admissions.verify(spec, topo) if master else ([], [])
    if args.json:
        out = m.as_json()
        if master:
            out["control"] = {"lines": lines, "problems": problems, "ok": not problems}
        print(json.dumps(out, indent=1))
    else:
        print(V.render(m, color=sys.stdout.isatty()))
        for line in lines + [f"MISMATCH: {p}" for p in problems]:
            print(line)
    return EXIT_OK if not m.mismatches and not problems else EXIT_FAIL


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m xen_tvd.lab")
    sub = ap.add_subparsers(dest="top")
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(["lab", *argv])
    return run(args)
