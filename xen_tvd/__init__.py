"""xen-tvd: Trusted Virtual Domains for Xen.

Layers (intent -> plan -> reconcile); tests/test_import_boundaries.py keeps them apart:
  policy/      the admin's intent as data (TVDs, properties, flows, hosts) and its verifier (pure)
  planner/     per-host desired state compiled from policy + capability model (pure)
  desired/     the contract: desired-state model, its JSON, device names, identifier patterns,
               the capability vocabulary, the transports' contract halves (docs/transports.md)
  dataplane/   the only layer that touches the kernel; reconciles desired vs actual
  proxy/       tvd-proxy, one per Dom0: admission and the only process changing its network
  master/      tvd-master: CA, mutual-TLS API, store, signed per-host plans, audit
  lab/         network-namespace multi-host lab that exercises the real dataplane and daemons
  cli/         tvdctl, the administrator's command line
  libvirt/     libvirt domain membership, the domain hook and per-TVD libvirt networks
  data/        files installed on a Dom0: vif-tvd and libvirt hooks (stdlib), systemd units
Shared modules: xlcfg and xlmembership (xl.cfg as libxlu reads it; a domain's TVDs),
yamlsrc, yamlschema and diagnostics (positioned YAML, typed readers, one-line problems),
boundedjson (bounded JSON from peers), log (the daemons' journald lines), errors (Refused,
UsageError), metrics (Prometheus text exposition for the daemons' textfile).
"""
__version__ = "0.1.0"
