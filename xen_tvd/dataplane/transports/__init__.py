"""The kernel halves of the transports: one plugin per transport the contract registers.

Nothing is listed here: every transport in xen_tvd.desired.transports.ORDER has its plugin in
the module of its name in this package (PLUGIN), loaded by that name, as os-vif loads a plugin
per VIF type. A transport without its plugin fails this import, loudly.
"""
from __future__ import annotations

import importlib

from xen_tvd.desired import transports as contract

from .base import PluginInfo, UnderlayPart, UplinkPlugin

PLUGINS: tuple[UplinkPlugin, ...] = tuple(
    importlib.import_module(f"{__name__}.{t.name}").PLUGIN for t in contract.ORDER)


def plugin_for(uplink) -> UplinkPlugin | None:
    """The plugin of a Segment.uplink; None for None (a host-local segment) or an unknown type."""
    for p in PLUGINS:
        if isinstance(uplink, p.transport.uplink):
            return p
    return None


__all__ = ["PLUGINS", "plugin_for", "PluginInfo", "UnderlayPart", "UplinkPlugin"]
