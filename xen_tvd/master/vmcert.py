"""VM certificates as admission evidence (docs/master-protocol.md, "Admission with evidence").

Stable API for the proxy:
    vm_properties(cert_pem, ca_cert, vm_uuid, revoked_serials) -> {property: assurance}
        raises VmCertRejected (one line) unless the certificate chains to the pinned CA, is
        valid now, is not revoked and names this VM's UUID.
"""
from __future__ import annotations

import json
import uuid as uuidlib

from cryptography import x509

from xen_tvd.master.bundle import issued_cert
from xen_tvd.master.ca import VM_OU, VM_PROPERTIES_OID, identity


class VmCertRejected(Exception):
    pass


def vm_uuid_of(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("urn:uuid:"):
            try:
                return str(uuidlib.UUID(uri[len("urn:uuid:"):]))
            except ValueError:
                return None
    return None


def vm_properties(cert_pem, ca_cert, vm_uuid: str, revoked_serials=()) -> dict[str, str]:
    cert = issued_cert(cert_pem, ca_cert, "VM certificate", VmCertRejected)
    ou, cn, serial = identity(cert)
    if ou != VM_OU:
        raise VmCertRejected(f"certificate OU is {ou!r}, not {VM_OU}: not a VM certificate")
    if serial in {int(s) for s in revoked_serials}:
        raise VmCertRejected(f"VM certificate serial {serial} is revoked")
    try:
        want = str(uuidlib.UUID(vm_uuid))
    except (ValueError, TypeError):
        raise VmCertRejected(f"VM UUID {vm_uuid!r} is not a UUID") from None
    got = vm_uuid_of(cert)
    if got != want:
        raise VmCertRejected(f"VM certificate is for {got or 'no UUID'}, not VM {want}")
    try:
        raw = cert.extensions.get_extension_for_oid(VM_PROPERTIES_OID).value.value
        props = json.loads(raw)
    except (x509.ExtensionNotFound, ValueError, AttributeError):
        raise VmCertRejected("VM certificate carries no readable property extension") from None
    if not isinstance(props, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in props.items()):
        raise VmCertRejected("VM certificate property extension is not {property: assurance}")
    return props
