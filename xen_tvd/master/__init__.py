"""tvd-master: the paper's TVD master (section 5): CA, enrolment, signed per-host bundles,
evidence rules and an append-only audit log. Protocol: docs/master-protocol.md."""
