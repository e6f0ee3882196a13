"""A small client for etcd's v3 JSON gateway: several endpoints, failover, optimistic
transactions, leases and watches. etcd3gw does the HTTP, base64 and the gateway's API path;
this module adds what the master needs on top (docs/master.md, "Replicas on etcd").

Every read is linearizable (etcd's default): a member cut off from its cluster's majority
cannot answer, so a master never decides on stale state; after TIMEOUT seconds it tries the
next endpoint, and when none answers it raises StoreUnavailable (the API answers 503).
"""
from __future__ import annotations

import base64
import json
import threading
from urllib.parse import urlsplit

import requests
from etcd3gw.client import Etcd3Client

from xen_tvd.master.store import StoreUnavailable

TIMEOUT = 2.0
MAX_TXN_BYTES = 1024 * 1024          # etcd refuses requests over 1.5 MiB by default
MAX_TXN_OPS = 128                    # and transactions of more operations (--max-txn-ops)
CONFLICT_RETRIES = 200


class Conflict(Exception):
    """An optimistic transaction lost its race; run it again. args[0]: what the keys it
    read hold now ({key: (value, mod revision)}), for the next attempt."""


TLS_FILES = ("etcd-ca.pem", "etcd-client.pem", "etcd-client.key")


def parse_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """etcd[s]://HOST:PORT[,HOST:PORT...][/PREFIX] -> (endpoints, key prefix ending in '/').
    etcds: TLS with a client certificate (TLS_FILES in the master's directory)."""
    p = urlsplit(url)
    if p.scheme not in ("etcd", "etcds") or not p.netloc:
        raise ValueError(f"store {url!r}: write etcd://HOST:PORT[,HOST:PORT...][/PREFIX] "
                         "(etcds:// for TLS)")
    endpoints = []
    for item in p.netloc.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"store {url!r}: endpoint {item!r} is not HOST:PORT")
        endpoints.append((host.strip("[]"), int(port)))
    prefix = p.path.strip("/") or "tvd-master"
    if any(c in prefix for c in "\0\n"):
        raise ValueError(f"store {url!r}: the prefix may not hold control characters")
    return endpoints, prefix + "/"


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


class Kv:
    """Thread-safe: each thread has its own HTTP session per endpoint (requests sessions are
    not meant to be shared), and all threads share which endpoint answered last."""

    def __init__(self, endpoints: list[tuple[str, int]], timeout: float = TIMEOUT,
                 tls: tuple[str, str, str] | None = None) -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self.tls = tls          # (CA file, client certificate, its key): https, verified
        self._local = threading.local()
        self._current = 0

    def _client(self, i: int) -> Etcd3Client:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        c = clients.get(i)
        if c is None:
            host, port = self.endpoints[i]
            extra = {}
            if self.tls:
                extra = dict(protocol="https", ca_cert=self.tls[0], cert_cert=self.tls[1],
                             cert_key=self.tls[2])
            c = clients[i] = Etcd3Client(host=host, port=port, timeout=self.timeout,
                                         api_path="/v3/", **extra)
            # the environment's proxies and CA bundle (REQUESTS_CA_BUNDLE would replace the
            # etcd cluster's CA) have no say over the store's connections
            c.session.trust_env = False
        return c

    def post(self, path: str, body: dict, timeout: float | None = None) -> dict:
        """POST to the first endpoint that answers (starting with the last one that did)."""
        errors = []
        start = self._current
        for k in range(len(self.endpoints)):
            i = (start + k) % len(self.endpoints)
            c = self._client(i)
            try:
                resp = c.session.post(c.get_url(path), data=json.dumps(body),
                                      timeout=timeout or self.timeout)
            except requests.RequestException as e:
                errors.append(f"{self.endpoints[i][0]}:{self.endpoints[i][1]}: "
                              f"{type(e).__name__}")
                continue
            if resp.status_code != 200:
                # 503 and friends: this member has no quorum or is stopping
                errors.append(f"{self.endpoints[i][0]}:{self.endpoints[i][1]}: HTTP "
                              f"{resp.status_code} {resp.text[:120]}")
                if resp.status_code >= 500:
                    continue
                raise StoreUnavailable("etcd refused a request: " + errors[-1])
            self._current = i
            return resp.json()
        raise StoreUnavailable("no etcd endpoint answered (" + "; ".join(errors) + ")")

    # -- key-value -----------------------------------------------------------------------------
    def get(self, key: bytes) -> tuple[bytes | None, int]:
        """(value or None, mod_revision or 0)."""
        r = self.post("kv/range", {"key": b64(key)})
        kvs = r.get("kvs") or []
        if not kvs:
            return None, 0
        return unb64(kvs[0].get("value", "")), int(kvs[0]["mod_revision"])

    def get_prefix(self, prefix: bytes, keys_only: bool = False,
                   min_mod_revision: int | None = None) -> tuple[list[tuple[bytes, bytes, int]], int]:
        """([(key, value, mod_revision)] sorted by key, store revision)."""
        body = {"key": b64(prefix), "range_end": b64(prefix_end(prefix)), "sort_order": 1,
                "sort_target": 0}
        if keys_only:
            body["keys_only"] = True
        if min_mod_revision:
            body["min_mod_revision"] = min_mod_revision
        r = self.post("kv/range", body)
        out = [(unb64(kv["key"]), unb64(kv.get("value", "")), int(kv["mod_revision"]))
               for kv in r.get("kvs") or []]
        return out, int(r["header"]["revision"])

    def count_prefix(self, prefix: bytes) -> int:
        r = self.post("kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "count_only": True})
        return int(r.get("count", 0))

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict] | None = None
            ) -> tuple[bool, dict]:
        r = self.post("kv/txn", {"compare": compare, "success": success,
                                 "failure": failure or []})
        return bool(r.get("succeeded")), r

    def revision(self) -> int:
        r = self.post("kv/range", {"key": b64(b"\0"), "count_only": True})
        return int(r["header"]["revision"])

    # -- leases --------------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        return int(self.post("lease/grant", {"TTL": ttl})["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's remaining TTL, or -1 if it expired."""
        r = self.post("lease/keepalive", {"ID": lease})
        return int((r.get("result") or {}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        self.post("kv/lease/revoke", {"ID": lease})

    # -- watches -------------------------------------------------------------------------------
    def watch_prefix(self, prefix: bytes, start_revision: int, on_event, stop: threading.Event,
                     idle: float = 5.0) -> int:
        """Stream changes under prefix from start_revision into on_event(key, value_or_None,
        mod_revision) until the stream ends, goes quiet for `idle` seconds (then the caller
        opens a new one: a dead connection looks exactly like a quiet one) or stop is set.
        Returns the next revision to watch from."""
        i = self._current
        c = self._client(i)
        body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "start_revision": start_revision}}
        try:
            resp = c.session.post(c.get_url("watch"), data=json.dumps(body), stream=True,
                                  timeout=(self.timeout, idle))
            if resp.status_code != 200:
                raise StoreUnavailable(f"watch refused: HTTP {resp.status_code}")
            with resp:
                for line in resp.iter_lines():
                    if stop.is_set():
                        break
                    if not line.strip():
                        continue
                    result = json.loads(line).get("result") or {}
                    if result.get("canceled"):
                        # compacted past start_revision: the caller resyncs from a full read
                        raise StoreUnavailable("watch canceled: "
                                               + str(result.get("cancel_reason", "")))
                    for ev in result.get("events") or []:
                        kv = ev["kv"]
                        rev = int(kv["mod_revision"])
                        value = None if ev.get("type") == "DELETE" else unb64(kv.get("value", ""))
                        on_event(unb64(kv["key"]), value, rev)
                        start_revision = max(start_revision, rev + 1)
        except (requests.RequestException, ValueError):
            self._current = (i + 1) % len(self.endpoints)
        return start_revision


def cmp_mod(key: bytes, mod_revision: int) -> dict:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision}


def cmp_create(key: bytes, create_revision: int) -> dict:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL",
            "create_revision": create_revision}


def op_put(key: bytes, value: bytes, lease: int | None = None) -> dict:
    req = {"key": b64(key), "value": b64(value)}
    if lease:
        req["lease"] = lease
    return {"request_put": req}


def op_delete(key: bytes) -> dict:
    return {"request_delete_range": {"key": b64(key)}}


def op_get(key: bytes) -> dict:
    return {"request_range": {"key": b64(key)}}


class Tx:
    """One optimistic transaction: reads remember each key's mod_revision, writes are kept
    until commit, which applies them only if no key read has changed since (and `guards`
    hold). A lost race raises Conflict and the caller runs the whole operation again."""

    def __init__(self, kv: Kv, guards: list[dict] | None = None,
                 known: dict[bytes, tuple[bytes | None, int]] | None = None) -> None:
        self.kv = kv
        self.reads: dict[bytes, tuple[bytes | None, int]] = {}
        self.writes: dict[bytes, bytes | None] = {}
        self.guards = list(guards or [])
        self.known = known or {}     # (value, mod revision) as a lost race left them

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        if key not in self.reads:
            self.reads[key] = self.known[key] if key in self.known else self.kv.get(key)
        return self.reads[key][0]

    def get_unless_new(self, key: bytes) -> bytes | None:
        """get() for a key that is almost always absent (an event id's claim): assumed absent
        without a round trip; the commit compares it as absent, and if it was there after
        all the lost race reads it back for the next attempt."""
        if key not in self.writes and key not in self.reads and key not in self.known:
            self.reads[key] = (None, 0)
        return self.get(key)

    def get_json(self, key: bytes):
        v = self.get(key)
        return None if v is None else json.loads(v)

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def put_json(self, key: bytes, obj) -> None:
        self.put(key, json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())

    def delete(self, key: bytes) -> None:
        self.writes[key] = None

    def commit(self) -> None:
        if not self.writes:
            return
        compare = self.guards + [cmp_mod(k, rev) for k, (_, rev) in self.reads.items()]
        ops = [op_delete(k) if v is None else op_put(k, v) for k, v in self.writes.items()]
        if max(len(compare), len(ops)) > MAX_TXN_OPS:
            # a caller's chunking bug, not the store's state: say so rather than let etcd
            raise ValueError(f"transaction of {len(ops)} writes / {len(compare)} compares "
                             f"over etcd's {MAX_TXN_OPS}")
        # when it loses, the same request reads back what it had read (one snapshot): the
        # next attempt starts from there instead of reading every key again
        keys = list(self.reads)[:MAX_TXN_OPS]
        ok, r = self.kv.txn(compare, ops, [op_get(k) for k in keys])
        if not ok:
            fresh = {}
            for k, resp in zip(keys, r.get("responses") or []):
                kvs = (resp.get("response_range") or {}).get("kvs") or []
                fresh[k] = ((unb64(kvs[0].get("value", "")), int(kvs[0]["mod_revision"]))
                            if kvs else (None, 0))
            raise Conflict(fresh)
