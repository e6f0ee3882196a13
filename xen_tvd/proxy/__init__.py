"""tvd-proxy: the Dom0 daemon that owns the TVD network (paper 4.5, 5.2 step 6).

    protocol   framing, versions, the client used by tvdctl (hotplug/vif-tvd has its own copy)
    state      persistent registrations and the vif table (atomic JSON, 0600)
    admission  which TVD a vif joins and whether host and VM satisfy M(t)
    daemon     the UNIX-socket server, the writer lock, reconcile on start
    main       `tvd-proxy run ...`, `tvd-proxy enroll ...`
  master mode (docs/master-protocol.md):
    master_link   enrolment, capability report, the bundle watch, contact, revocation
    bundle_store  verified bundle -> Policy + segments; stored 0600, re-verified on load
    evidence      VM certificate and image-digest checks
    sessions      continual membership: periodic and per-bundle re-admission
    audit_spool   audit events on disk first, flushed in order
    capabilities  functional probes in a throw-away netns + the admin's claims file
"""
