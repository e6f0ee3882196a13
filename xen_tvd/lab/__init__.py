"""Network-namespace lab: several Dom0 "hosts", their VMs and the physical network between them,
built on the host kernel and wired with the real dataplane (see docs/lab.md).

Kept import-light: xen_tvd.lab.agent runs inside namespaces and must start fast.
"""
