"""xen-tvd: Trusted Virtual Domains for Xen.

Layers (intent -> plan -> reconcile):
  policy/     the admin's intent as data, and its verifier (pure)
  planner/    per-host desired state compiled from policy + capability model (pure)
  dataplane/  the only layer that touches the kernel; reconciles desired vs actual
  lab/        network-namespace multi-host lab that exercises the real dataplane
"""
__version__ = "0.1.0"
