"""tvd-proxy: the Dom0 daemon that owns the TVD network (paper 4.5, 5.2 step 6).

    protocol   framing, versions, the client used by tvdctl (hotplug/vif-tvd has its own copy)
    state      persistent registrations and the vif table (atomic JSON, 0600)
    admission  which TVD a vif joins and whether host and VM satisfy M(t)
    daemon     the UNIX-socket server, the writer lock, reconcile on start
    main       `tvd-proxy run ...`
"""
