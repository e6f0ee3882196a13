"""The desired state of a Dom0's TVD network: the contract every layer shares.

The planner produces it, the master signs it into bundles, the proxy decodes and applies it,
the dataplane makes the kernel match it, the lab and tools name its devices. It belongs to
none of them (as OVN's southbound schema belongs to neither northd nor ovn-controller), so it
imports only the standard library and each of them imports it.

    model     HostState and its parts: frozen dataclasses, no kernel handles, no I/O
    serial    those dataclasses <-> plain JSON (the master's signed bundle)
    names     names of the devices and namespaces xen-tvd creates, and how they are derived
    patterns  identifier rules: UUIDs, policy names, MACs, interface names (one rule each)
    capabilities  the one capability vocabulary: report words, their probes, policy words
    transports    each transport's contract half (capability, eligibility, overhead, uplink
                  model) and ORDER, the one registry of transports (docs/transports.md)

vif-tvd (xen_tvd/data/hotplug) runs without xen_tvd and keeps standard-library copies of
some names and patterns; tests/desired/test_patterns.py checks they stay equal.
"""
