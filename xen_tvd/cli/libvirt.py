"""tvdctl libvirt …: libvirt networks for the TVDs, the domain hook, membership of a domain.

    tvdctl libvirt networks POLICY [-o DIR] [--define [--uri URI] [--autostart] [--start]]
    tvdctl libvirt membership DOMAIN.xml       what the hook would register for a domain
    tvdctl libvirt install-hook [--hooks-dir DIR]   domain hook (libxl.d, qemu.d), network hook

Exit codes as tvdctl: 0 ok, 1 refused (policy errors, libvirt refused), 2 usage/unreadable.
"""
from __future__ import annotations

import json
import os
import sys

from xen_tvd.cli.common import load_or_report
from xen_tvd.errors import UsageError

HOOKS_DIR = "/etc/libvirt/hooks"


def cmd_networks(args) -> int:
    from xen_tvd.libvirt import networks as nw

    policy = load_or_report(args.policy)
    if policy is None:
        return 1
    try:
        docs = nw.networks(policy)
    except nw.DefineError as e:
        print(f"tvdctl: {e}", file=sys.stderr)
        return 1
    if args.output:
        try:
            os.makedirs(args.output, exist_ok=True)
            for name, xml in docs.items():
                path = os.path.join(args.output, f"{name}.xml")
                with open(path, "w") as f:
                    f.write(xml)
                print(f"wrote {path}")
        except OSError as e:
            raise UsageError(f"cannot write to {args.output}: {e.strerror or e}") from None
    elif not args.define:
        sys.stdout.write("".join(docs.values()))
    if not args.define:
        if args.autostart or args.start:
            raise UsageError("--autostart/--start need --define")
        return 0
    try:
        import libvirt
    except ImportError:
        raise UsageError("--define needs libvirt-python (pip install libvirt-python; it builds "
                     "against Debian's libvirt-dev)") from None
    try:
        conn = libvirt.open(args.uri)
    except libvirt.libvirtError as e:
        print(f"tvdctl: cannot connect to libvirt at {args.uri or 'the default URI'}: "
              f"{e.get_error_message()}", file=sys.stderr)
        return 1
    try:
        for r in nw.define(conn, policy, autostart=args.autostart, start=args.start):
            print(r)
    except nw.DefineError as e:
        print(f"tvdctl: {e}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    return 0


def cmd_membership(args) -> int:
    from xen_tvd.libvirt.domain import MembershipError, parse_domain
    try:
        with open(args.domain, "rb") as f:
            xml = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {args.domain}: {e.strerror or e}") from None
    try:
        m = parse_domain(xml)
    except MembershipError as e:
        print(f"refused: {e}")
        return 1
    if args.json:
        print(json.dumps(m.register_request() if m.is_member else None, indent=2))
        return 0
    if not m.is_member:
        print(f"domain {m.name} ({m.uuid}) is in no TVD: the hook lets it start untouched")
        return 0
    print(f"domain {m.name} ({m.uuid}): TVD {', '.join(m.tvds)}")
    for n in m.nics:
        print(f"  devid {n.devid}  mac {n.mac or '-'}  {n.type} {n.source or '-'}  -> {n.tvd} "
              f"(from {n.why})")
    props = ", ".join(f"{k}:{v}" if v else k for k, v in sorted(m.properties.items())) or "none"
    print(f"  properties: {props}")
    if not m.tx_checksum_offload:
        print("  vif tx checksum offload: off (tx-checksum-offload='off'; vifs plugged by vif-tvd)")
    return 0


def cmd_install_hook(args) -> int:
    """The hook scripts of the package's hotplug data whose install paths lie under libvirt's
    hooks directory (tvdctl install puts all of them there), into --hooks-dir."""
    from xen_tvd.cli import install
    python = args.python or sys.executable
    try:
        hooks = [(t, s.text(python)) for s in install.hotplug_scripts() for t in s.targets
                 if t.startswith(HOOKS_DIR + "/")]
        for target, data in hooks:
            path = os.path.join(args.hooks_dir, os.path.relpath(target, HOOKS_DIR))
            install.install_file(path, data, 0o755)
            print(f"installed {path}")
    except install.InstallError as e:
        raise UsageError(str(e)) from None
    print("restart libvirtd (or virtqemud/virtxend) so it picks the hooks up")
    return 0


def add_parsers(sub) -> None:
    lv = sub.add_parser("libvirt", help="libvirt networks for the TVDs and the domain hook")
    lsub = lv.add_subparsers(dest="libvirt_cmd", metavar="SUBCOMMAND")
    lsub.required = True

    n = lsub.add_parser("networks", help="one libvirt <network> per TVD vSwitch")
    n.add_argument("policy", metavar="POLICY")
    n.add_argument("-o", "--output", metavar="DIR", help="write DIR/tvd-<name>.xml instead of stdout")
    n.add_argument("--define", action="store_true",
                   help="define them through libvirt (idempotent: changed ones are redefined)")
    n.add_argument("--uri", default=None, help="libvirt URI (default: libvirt's default)")
    n.add_argument("--autostart", action="store_true", help="with --define: mark them autostart")
    n.add_argument("--start", action="store_true", help="with --define: start inactive ones")
    n.set_defaults(func=cmd_networks)

    m = lsub.add_parser("membership", help="the TVD membership the hook reads from a domain XML")
    m.add_argument("domain", metavar="DOMAIN.xml")
    m.add_argument("--json", action="store_true", help="print the proxy register request")
    m.set_defaults(func=cmd_membership)

    h = lsub.add_parser("install-hook", help="install the libvirt hooks only: the domain hook "
                        "(libxl, qemu) and the network hook (tvdctl install installs them too)")
    h.add_argument("--hooks-dir", default=HOOKS_DIR, metavar="DIR")
    h.add_argument("--python", default=None, metavar="PATH",
                   help="interpreter for the hook (default: this one, which has xen_tvd)")
    h.set_defaults(func=cmd_install_hook)
