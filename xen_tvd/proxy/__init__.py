"""tvd-proxy: the Dom0 daemon that owns the TVD network (paper 4.5, 5.2 step 6).

    protocol   framing, versions, the raw request() (vif-tvd has its own stdlib copy)
    requests   one typed request per op: to_wire() for clients, parse() for the core
    client     ProxyClient: the typed client of tvdctl, the libvirt hooks, the labs, the tests
    core       the one control plane: writer lock, vif/port tables, converge, segment GC, handlers
    vifs       vif-online / vif-offline / leave's detaches (devices.py checks the device first)
    devices    is the interface the request's vif (Xen netback or tap of that domain)? (#16.2)
    answers    the status answer
    authority  what the core asks of its mode: standalone.py (the policy file, the planner)
               or master_authority.py (the master's bundle, evidence, audit)
    dataplane_port  the core's only way to the kernel (KernelDataplane; tests give a stand-in)
    daemon     the UNIX-socket server; build_standalone / build_master
    state      persistent registrations, the vif and libvirt port tables (atomic JSON, 0600)
    admission  which TVD a vif joins and whether host and VM satisfy M(t)
    routes     which routed inter-TVD state a host instantiates (both modes)
    ports      libvirt network ports (network hook) and the reconnect re-check
    main       `tvd-proxy run ...`, `tvd-proxy enroll ...`
  master mode (docs/master-protocol.md):
    master_link   enrolment, capability report, the bundle watch, contact, revocation
    bundle_store  verified bundle -> Policy + segments; stored 0600, re-verified on load
    evidence      VM certificate and image-digest checks
    sessions      continual membership: periodic and per-bundle re-admission
    audit_spool   audit events on disk first, flushed in order
    capabilities  functional probes in a throw-away netns + the admin's claims file
"""
