"""The TVD side of an xl domain config: which TVD each vif joins, and the config handed to xl.

TVD keys (xl ignores unknown top-level keys; tvdctl reads them, docs/xl.md):
    tvd = "alpha"               every vif in TVD alpha
    tvd = ["alpha", "gamma"]    one TVD per vif, in vif order
    vswitch = "tvd-alpha"       optional; must be the TVD's vSwitch (one per TVD and host)
    tvd_properties = ["signed-kernel:trust", ...]   the VM's properties[:assurance] for M(t)
    tvd_cert, tvd_images        master-mode evidence (docs/master-protocol.md)
    tvd_tx_checksum_offload = 0 vif tx checksum offload off on this VM's vifs, even in a TVD
                                that has it on (1, the default: as its TVDs say)
    vif = ['bridge=tvd:alpha']  per-vif choice in a key xl keeps (the migration-safe encoding)

vif specs are read as xl reads them (xlcfg.parse_vif): `devid=` names the vif's device id (else
its index), `mtu=` is kept unless above the TVD's MTU, `backend=` (a driver domain) and
`vifname=` are refused, and every replaced `bridge=`/`script=` is reported.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from xen_tvd.desired.names import BACKEND_BRIDGE_PREFIX
from xen_tvd.desired.patterns import NAME_RE
from xen_tvd.xlcfg import XlCfgError, XlConfig, format_vif, parse_vif

# uuid= as an xl.cfg may write it (either case, hyphens optional); normalised to the canonical
# form (xen_tvd.desired.patterns.UUID_RE) before use
XL_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
SCRIPT = "vif-tvd"
SCRIPT_PATHS = (SCRIPT, "/etc/xen/scripts/" + SCRIPT)
MAX_DEVID = 65535            # vif<domid>.<devid> must fit an interface name (15 characters)
MTU_RANGE = (68, 65535)
UNSUPPORTED_VIF_KEYS = {
    "backend": "a network driver domain is not supported: vif-tvd and tvd-proxy run in dom0",
    "vifname": "tvd-proxy knows a vif by its vif<domid>.<devid> name, so a custom name is "
               "not supported",
}


@dataclass
class Membership:
    name: str
    uuid: str | None
    nics: list[tuple[int, str]]                  # (devid, TVD), in vif order
    properties: dict[str, str | None]
    vswitch: str | None = None
    # master mode evidence (docs/master-protocol.md): tvd_cert = VM certificate file; images =
    # kernel, ramdisk and tvd_images files the proxy hashes (disks only when listed: hashing a
    # multi-GB disk at every session re-check is the admin's explicit choice)
    cert: str | None = None
    images: list[str] = field(default_factory=list)
    # tvd_tx_checksum_offload = 0: off on every vif of the VM (the proxy keeps the stricter of
    # this and each TVD's tx-checksum-offload); True: as the TVDs say
    tx_checksum_offload: bool = True


TX_CSUM_KEY = "tvd_tx_checksum_offload"


@dataclass
class XlCopy:
    """What `xl create` gets: `text` = the user's file + overriding assignments; `notes` say
    what was replaced or lowered (tvdctl prints them)."""
    text: str
    overrides: dict[str, object]
    notes: list[str]


def _err(cfg: XlConfig, key: str, msg: str):
    s = cfg.setting(key)
    raise XlCfgError(cfg.path, s.line if s else 1, s.col if s else 1, msg)


def _string(cfg: XlConfig, key: str, what: str) -> str | None:
    v = cfg.get(key)
    if v is not None and not isinstance(v, str):
        _err(cfg, key, f"{key} must be {what}, not a list")
    return v


def _strings(cfg: XlConfig, key: str, msg: str) -> list[str]:
    """A string or a list of strings (our own keys accept both)."""
    v = cfg.get(key, [])
    v = [v] if isinstance(v, str) else v
    if not all(isinstance(x, str) for x in v):
        _err(cfg, key, msg)
    return v


def vif_specs(cfg: XlConfig) -> list[str]:
    """The vif strings xl creates NICs from (xl reads `vif` with xlu_cfg_get_list only)."""
    v = cfg.get("vif", [])
    if isinstance(v, str):
        _err(cfg, "vif", "vif must be a list: xl creates no vif from a single string "
                         "(write vif = ['...'])")
    for i, spec in enumerate(v):
        if not isinstance(spec, str):
            _err(cfg, "vif", f"vif {i} is a list; each vif is one string (xl stops reading vifs "
                             f"at the first item that is not a string)")
    return v


def _number(cfg: XlConfig, index: int, key: str, text: str, lo: int, hi: int) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", text) or not lo <= int(text) <= hi:
        _err(cfg, "vif", f"vif {index}: {key}={text!r} must be a decimal number {lo}..{hi}")
    return int(text)


def vif_keys(cfg: XlConfig, index: int, spec: str) -> dict[str, str | None]:
    """One vif's keys as xl applies them (the last of each wins), refused where unsupported."""
    items = parse_vif(spec)
    for k, v in items:
        if k in UNSUPPORTED_VIF_KEYS:
            _err(cfg, "vif", f"vif {index}: {k}={v}: {UNSUPPORTED_VIF_KEYS[k]}; remove {k}=")
        if k in ("mtu", "devid"):    # xl stops on any unreadable one, not only the last
            _number(cfg, index, k, v, *(MTU_RANGE if k == "mtu" else (0, MAX_DEVID)))
    return dict(items)


def _devids(cfg: XlConfig, specs: list[dict]) -> list[int]:
    devids, seen = [], {}
    for i, keys in enumerate(specs):
        d = int(keys["devid"]) if "devid" in keys else i
        if d in seen:
            _err(cfg, "vif", f"vif {i} and vif {seen[d]} both have devid {d}")
        seen[d] = i
        devids.append(d)
    return devids


def _tvds(cfg: XlConfig, nvifs: int) -> list[str | None]:
    tvd = cfg.get("tvd")
    if tvd is None:
        return [None] * nvifs
    tvds = [tvd] * nvifs if isinstance(tvd, str) else tvd
    if not all(isinstance(t, str) for t in tvds):
        _err(cfg, "tvd", "tvd must be a string or a list of strings (one per vif)")
    if isinstance(tvd, list) and len(tvd) != nvifs:
        _err(cfg, "tvd", f"tvd lists {len(tvd)} TVD(s) but the domain has {nvifs} vif(s); "
                         f"give one per vif, or one string for all")
    for t in tvds or [tvd]:
        if not NAME_RE.match(t):
            _err(cfg, "tvd", f"{t!r} is not a TVD name (1-32 of a-z 0-9 _ -, starting with a letter)")
    return tvds


def _tx_checksum_offload(cfg: XlConfig) -> bool:
    """tvd_tx_checksum_offload: 0 or 1 as xl writes booleans (a number, or the same in quotes)."""
    v = cfg.get(TX_CSUM_KEY)
    if v is None:
        return True
    if v not in ("0", "1"):
        _err(cfg, TX_CSUM_KEY, f"{TX_CSUM_KEY} must be 0 (tx checksum offload off on this VM's "
                               f"vifs, for a guest that mishandles it) or 1 (as its TVDs say, the "
                               f"default), got {v!r}")
    return v == "1"


def membership(cfg: XlConfig) -> Membership:
    """Which TVD each vif joins. Per-vif bridge=tvd:<name> wins; else top-level tvd=."""
    name = _string(cfg, "name", "a string")
    if not name:
        _err(cfg, "name", "the domain needs name = \"...\"")
    if any("\udc80" <= c <= "\udcff" for c in name):
        _err(cfg, "name", "name is not UTF-8 text")
    uuid = _string(cfg, "uuid", "a string")
    if uuid is not None and not XL_UUID_RE.fullmatch(uuid):
        _err(cfg, "uuid", f"uuid {uuid!r} is not a UUID")
    if uuid is not None:
        u = uuid.replace("-", "").lower()
        uuid = f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}"
    specs = [vif_keys(cfg, i, s) for i, s in enumerate(vif_specs(cfg))]
    devids = _devids(cfg, specs)
    tvds = _tvds(cfg, len(specs))
    nics = []
    for i, (keys, devid, want) in enumerate(zip(specs, devids, tvds)):
        bridge = keys.get("bridge") or ""
        mine = bridge[len(BACKEND_BRIDGE_PREFIX):] if bridge.startswith(BACKEND_BRIDGE_PREFIX) \
            else None
        if mine is not None and not NAME_RE.match(mine):
            _err(cfg, "vif", f"vif {i}: bridge={bridge!r} is not tvd:<name> with a valid TVD name")
        if mine and want and mine != want:
            _err(cfg, "tvd", f"vif {i} says bridge=tvd:{mine} but tvd= puts it in {want}")
        if not (mine or want):
            _err(cfg, "vif", f"vif {i} has no TVD: add bridge=tvd:<name> to it or a top-level "
                             f"tvd = \"<name>\"")
        nics.append((devid, mine or want))
    props: dict[str, str | None] = {}
    for p in _strings(cfg, "tvd_properties",
                      "tvd_properties must be a list of \"property[:assurance]\" strings"):
        prop, _, assurance = p.partition(":")
        props[prop.strip()] = assurance.strip() or None
    vswitch = _string(cfg, "vswitch", "a string")
    cert = _string(cfg, "tvd_cert", "the path of the VM certificate (tvd-master vm-cert)")
    if cert == "":
        _err(cfg, "tvd_cert", "tvd_cert must be the path of the VM certificate (tvd-master vm-cert)")
    images = [cfg.get(k) for k in ("kernel", "ramdisk") if isinstance(cfg.get(k), str)]
    extra = _strings(cfg, "tvd_images", "tvd_images must be a list of image file paths")
    if not all(extra):
        _err(cfg, "tvd_images", "tvd_images must be a list of image file paths")
    images = list(dict.fromkeys(os.path.abspath(p) for p in images + extra))
    return Membership(name, uuid, nics, props, vswitch,
                      os.path.abspath(cert) if cert else None, images, _tx_checksum_offload(cfg))


def for_xl(cfg: XlConfig, m: Membership, uuid: str,
           tvd_mtu: dict[str, int] | None = None) -> XlCopy:
    """The config for `xl create`: CFG as written, then uuid pinned and the vif list again with
    every vif's bridge=tvd:<its TVD> and script=vif-tvd, and mtu= lowered to its TVD's MTU
    (tvd_mtu, when known). The user's other vif keys are kept as written; our top-level keys
    stay (xl ignores them)."""
    notes, vifs = [], []
    for i, (spec, (devid, tvd)) in enumerate(zip(vif_specs(cfg), m.nics)):
        keys = dict(parse_vif(spec))
        if keys.get("bridge") not in (None, BACKEND_BRIDGE_PREFIX + tvd):
            notes.append(f"vif {i}: bridge={keys['bridge']} replaced by bridge=tvd:{tvd}")
        if keys.get("script") not in (None, *SCRIPT_PATHS):
            notes.append(f"vif {i}: script={keys['script']} replaced by script={SCRIPT} "
                         f"(it hands the vif to tvd-proxy)")
        limit = (tvd_mtu or {}).get(tvd)
        if limit and "mtu" in keys and int(keys["mtu"]) > limit:
            notes.append(f"vif {i}: mtu={keys['mtu']} is above TVD {tvd}'s MTU {limit} on this "
                         f"host; lowered to mtu={limit}")
        items = [(k, str(min(int(v), limit)) if k == "mtu" and limit else v)
                 for k, v in parse_vif(spec) if k not in ("bridge", "script")]
        vifs.append(format_vif(items + [("bridge", BACKEND_BRIDGE_PREFIX + tvd), ("script", SCRIPT)]))
    overrides: dict[str, object] = {"uuid": uuid}
    if vifs:
        overrides["vif"] = vifs
    text = cfg.with_overrides(overrides, "tvdctl: these settings override the ones above "
                                         "(xl keeps the last assignment)")
    return XlCopy(text, overrides, notes)
