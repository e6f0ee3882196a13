"""tvdctl: the administrator's command line.

Exit codes: 0 ok (warnings allowed), 1 the policy or request is refused, 2 usage error or
unreadable input. Problems are printed one per line; tvdctl never shows a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from xen_tvd.policy import YamlUnreadable, check_file
from xen_tvd.policy.lattice import admit
from xen_tvd.policy.model import ASSURANCE_KINDS
from xen_tvd.cli import completion as cli_completion
from xen_tvd.cli.common import load_or_report, version
from xen_tvd.cli import install as cli_install
from xen_tvd.cli import libvirt as cli_libvirt
from xen_tvd.cli import xl as cli_xl
from xen_tvd.cli import master_admin as cli_master
from xen_tvd.cli import explain as cli_explain
from xen_tvd.cli import status as cli_status
from xen_tvd.errors import UsageError
from xen_tvd.lab import cli as cli_lab


def _color(stream) -> bool:
    return stream.isatty() and os.environ.get("NO_COLOR") is None and os.environ.get("TERM") != "dumb"


def cmd_check(args) -> int:
    results = []
    unreadable = False
    for path in args.files:
        try:
            _, diags = check_file(path, all_pairs=args.all)
        except YamlUnreadable as e:
            print(f"tvdctl: {e}", file=sys.stderr)
            unreadable = True
            results.append({"file": path, "readable": False, "diagnostics": []})
            continue
        results.append({"file": path, "readable": True, "diagnostics": diags})
    n_err = sum(d.is_error for r in results for d in r["diagnostics"])
    n_warn = sum(not d.is_error for r in results for d in r["diagnostics"])
    if args.json:
        out = {"files": [{"file": r["file"], "readable": r["readable"],
                          "errors": sum(d.is_error for d in r["diagnostics"]),
                          "warnings": sum(not d.is_error for d in r["diagnostics"]),
                          "diagnostics": [d.as_dict() for d in r["diagnostics"]]}
                         for r in results],
               "errors": n_err, "warnings": n_warn}
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        color = _color(sys.stdout)
        for r in results:
            for d in r["diagnostics"]:
                line = str(d)
                if color:
                    c = "\033[31m" if d.is_error else "\033[33m"
                    line = line.replace(f"{d.severity}:", f"{c}{d.severity}:\033[0m", 1)
                print(line)
        print(f"{len(args.files)} file(s): {n_err} error(s), {n_warn} warning(s)", file=sys.stderr)
    if unreadable:
        return 2
    return 1 if n_err else 0


def cmd_show(args) -> int:
    policy = load_or_report(args.file)
    if policy is None:
        return 1
    from xen_tvd.policy import render
    if args.json:
        json.dump(render.matrix_json(policy), sys.stdout, indent=2)
        print()
    else:
        print(render.matrix_text(policy, color=_color(sys.stdout)))
    return 0


def cmd_graph(args) -> int:
    policy = load_or_report(args.file)
    if policy is None:
        return 1
    from xen_tvd.policy import render
    dot = render.to_dot(policy)
    out = args.output
    fmt = out.rsplit(".", 1)[-1].lower() if "." in os.path.basename(out) else ""
    if fmt in ("dot", "gv"):
        try:
            with open(out, "w") as f:
                f.write(dot)
        except OSError as e:
            raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    elif fmt in render.FORMATS:
        try:
            render.render(dot, out, fmt)
        except render.RenderError as e:
            raise UsageError(str(e)) from None
    else:
        raise UsageError(f"cannot tell the format of '{out}': name it .dot, .svg or .png")
    print(f"wrote {out}")
    return 0


def parse_properties(text: str) -> dict[str, str | None]:
    """`a,b:immutable-log` -> {a: None, b: immutable-log} (None: assurance not stated)."""
    props: dict[str, str | None] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, kind = item.partition(":")
        if kind and kind not in ASSURANCE_KINDS:
            raise UsageError(f"unknown assurance kind '{kind}' for '{name}' "
                             f"(one of: {', '.join(ASSURANCE_KINDS)})")
        props[name] = kind or None
    return props


def cmd_admit(args) -> int:
    policy = load_or_report(args.policy)
    if policy is None:
        return 1
    machine = parse_properties(args.properties)
    unknown = sorted(p for p in machine if p not in policy.properties)
    result = admit(policy, args.tvd, machine)
    if args.json:
        json.dump({"admitted": result.admitted, "tvds": args.tvd,
                   "properties": machine, "reason": None if result.admitted else result.reason(),
                   "unknown_properties": unknown}, sys.stdout, indent=2)
        print()
        return 0 if result.admitted else 1
    if result.admitted:
        print(f"admit: {' + '.join(args.tvd)}")
        return 0
    print(f"deny: {result.reason()}")
    if unknown:
        print(f"note: properties unknown to the policy (dominate nothing): {', '.join(unknown)}")
    return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tvdctl", description="Trusted Virtual Domains for Xen")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    # sub-commands that need the whole parser (bash completion) get it from their args, so
    # no sub-command module imports this one back
    p.set_defaults(tvdctl_parser=p)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="verify policy files (schema and semantics)")
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--json", action="store_true", help="machine-readable diagnostics")
    c.add_argument("--all", action="store_true",
                   help="report every closed pair an indirect flow crosses, not one line per group")
    c.set_defaults(func=cmd_check)

    s = sub.add_parser("show", help="print the inter-TVD flow matrix (paper Figure 1)")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--json", action="store_true", help="the matrix and controlled flows as JSON")
    s.set_defaults(func=cmd_show)

    g = sub.add_parser("graph", help="draw TVDs, flows, shared-membership sets and hosts as "
                                     "DOT, SVG or PNG")
    g.add_argument("file", metavar="FILE")
    g.add_argument("-o", "--output", required=True, metavar="OUT.dot|OUT.svg|OUT.png")
    g.set_defaults(func=cmd_graph)

    a = sub.add_parser("admit", help="would a machine with these properties be admitted?")
    a.add_argument("--policy", required=True, metavar="FILE")
    a.add_argument("--tvd", required=True, action="append", metavar="NAME",
                   help="TVD to join; repeat for a VM in several TVDs")
    a.add_argument("--properties", required=True, metavar="P[:ASSURANCE],...",
                   help="the machine's properties, e.g. tpm-measured-boot:immutable-log")
    a.add_argument("--json", action="store_true", help="the decision as JSON (exit code as without)")
    a.set_defaults(func=cmd_admit)

    cli_libvirt.add_parsers(sub)
    cli_xl.add_parsers(sub)
    cli_lab.add_parser(sub)
    cli_master.add_parser(sub)
    cli_status.add_parser(sub)
    cli_explain.add_parser(sub)
    cli_install.add_parser(sub)
    cli_completion.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"tvdctl: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
