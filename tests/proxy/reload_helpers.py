"""Big policies for the reload attacks on tvd-proxy (issue #16.5), shared by
tests/proxy/test_proxy_attacks.py and bench/proxy_reload.py: a base policy whose `hosts:` section
comes last (xl-configs/tvd-hosts-policy.yaml) plus generated Dom0s until the file has the
size asked for. Every extra host is valid (unique address, known capability and property),
so only the size decides whether the policy is accepted."""
from __future__ import annotations

HOST = ("  gen{i:06d}:\n    address: 10.{a}.{b}.{c}\n    capabilities: [ethernet, ip]\n"
        "    properties: {{tpm-measured-boot: immutable-log}}\n")


def big_policy(base: str, size: int) -> str:
    """The text of `base` (a policy file ending in its hosts: section) grown to ~size bytes."""
    with open(base, encoding="utf-8") as f:
        parts = [f.read().rstrip("\n") + "\n"]
    total, i = len(parts[0]), 0
    while total < size:
        entry = HOST.format(i=i, a=100 + (i >> 16), b=(i >> 8) & 255, c=i & 255)
        parts.append(entry)
        total += len(entry)
        i += 1
    return "".join(parts)
