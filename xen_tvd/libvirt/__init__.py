"""libvirt integration (issue 4, point 4).

    domain    membership of a libvirt domain from its XML (standard library only: the hook
              imports it for every domain event)
    hook      /etc/libvirt/hooks/{libxl,qemu}: admission through tvd-proxy at prepare/start,
              the re-check at reconnect
    network_hook  /etc/libvirt/hooks/network: per-port admission of type='network' NICs
              (port-created, also for hot-plugged ones), port-deleted
    networks  one libvirt <network> per TVD vSwitch (lxml), defined through libvirt-python

This package's __init__ imports nothing: the hook must start fast.
"""
NS = "https://xen-tvd.org/xmlns/libvirt/1"   # our <metadata> namespace (docs/libvirt.md)
NS_PREFIX = "tvd"
NETWORK_PREFIX = "tvd-"                        # libvirt network of TVD t: tvd-<t>
