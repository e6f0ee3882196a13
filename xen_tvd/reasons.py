"""The fixed vocabulary of admission reasons (docs/metrics.md): a free-text reason of an
admission, denial or removal -> one word of REASON_CLASSES, so a metric's `reason` label stays
bounded whatever a message (or a host posting audit events) says. Shared by tvd-proxy's metrics
and tvd-master's (which counts the reasons its hosts report); the whole message stays in the
log and the audit. Standard library only."""
from __future__ import annotations

import re

# (pattern of the one-line reason, its class); first match wins, else "other"
REASON_CLASSES = (
    (re.compile(r"does not satisfy M\(t\)"), "membership"),
    (re.compile(r"no shared-membership set"), "shared-membership"),
    (re.compile(r"left TVD"), "left"),
    (re.compile(r"unknown TVD"), "unknown-tvd"),
    (re.compile(r"^no TVD for"), "no-tvd"),
    (re.compile(r"may not carry TVD"), "host"),
    (re.compile(r"routed together"), "routed"),
    (re.compile(r"revoked"), "revoked"),
    (re.compile(r"no valid policy bundle"), "no-bundle"),
    (re.compile(r"unreachable since"), "master-offline"),
    (re.compile(r"evidence|certificate|image "), "evidence"),
    (re.compile(r"session"), "session"),
    (re.compile(r"vif-offline|went away|left|libvirt deleted"), "gone"),
)
# every value reason_class() can return: "" (no reason: an admission), the classes, "other"
VOCABULARY = ("",) + tuple(dict.fromkeys(c for _, c in REASON_CLASSES)) + ("other",)


def reason_class(msg: str | None) -> str:
    if not msg or not isinstance(msg, str):
        return ""
    for rx, cls in REASON_CLASSES:
        if rx.search(msg):
            return cls
    return "other"
