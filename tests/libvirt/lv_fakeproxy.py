"""A tiny stand-in for tvd-proxy: speaks the local protocol v1 (docs/proxy-protocol.md) on a
temporary UNIX socket so the libvirt hook can be tested without the real daemon. It is NOT the
proxy: its admission is a toy (TVD -> required properties). The real `tvd-proxy run` is
exercised in test_hook_realproxy.py and test_libvirtd_ports.py. It also answers the network
hook's `port-online`/`port-offline` and the reconnect `check`, by the same toy rule, and
`status` with its tables. `delay`: seconds it works on each request before answering, one at
a time (a real proxy on a loaded machine).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time


class FakeProxy:
    def __init__(self, path: str, tvds: dict[str, set[str]], delay: float = 0.0) -> None:
        self.path, self.delay = path, delay
        self.tvds = {t: set(p) for t, p in tvds.items()}   # TVD -> properties a VM must hold
        self.requests: list[dict] = []
        self.registrations: dict[str, dict] = {}
        self.ports: dict[str, dict] = {}      # port UUID -> its port-online request
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _refusal(self, uuid: str, tvds) -> str | None:
        props = set(self.registrations.get(uuid, {}).get("properties", {}))
        for tvd in tvds:
            if tvd not in self.tvds:
                return f"unknown TVD '{tvd}'"
            missing = self.tvds[tvd] - props
            if missing:
                return f"admission denied: VM {uuid} lacks {', '.join(sorted(missing))} for TVD {tvd}"
        return None

    def _in_a_tvd(self, uuid: str) -> bool:
        return bool(self.registrations.get(uuid, {}).get("nics")) or \
            any(p["uuid"] == uuid for p in self.ports.values())

    def _answer(self, req: dict) -> dict:
        if req.get("v") != 1:
            return {"v": 1, "ok": False, "error": "protocol version not supported (this proxy speaks v1)"}
        op = req.get("op")
        if op == "ping":
            return {"v": 1, "ok": True, "version": "fake", "host": "fake"}
        if op == "status":
            return {"v": 1, "ok": True, "host": "fake", "registrations": list(self.registrations.values()),
                    "ports": list(self.ports.values())}
        if op == "register":
            for nic in req["nics"]:
                if nic["tvd"] not in self.tvds:
                    return {"v": 1, "ok": False, "error": f"unknown TVD '{nic['tvd']}'"}
                missing = self.tvds[nic["tvd"]] - set(req["properties"])
                if missing:
                    return {"v": 1, "ok": False,
                            "error": f"admission denied: VM {req['name']} lacks {', '.join(sorted(missing))} "
                                     f"for TVD {nic['tvd']}"}
            self.registrations[req["uuid"]] = req
            return {"v": 1, "ok": True}
        if op == "unregister":
            self.registrations.pop(req["uuid"], None)
            return {"v": 1, "ok": True}
        if op == "port-online":
            if req["tvd"] is None:
                if self._in_a_tvd(req["uuid"]):
                    return {"v": 1, "ok": False, "error": "the VM is in a TVD and this network in none"}
                return {"v": 1, "ok": True, "tvd": None}
            why = self._refusal(req["uuid"], [req["tvd"]])
            if why:
                return {"v": 1, "ok": False, "error": why}
            self.ports[req["port"]] = req
            return {"v": 1, "ok": True, "tvd": req["tvd"], "bridge": req["bridge"], "mtu": 1500}
        if op == "port-offline":
            self.ports.pop(req["port"], None)
            return {"v": 1, "ok": True}
        if op == "check":
            why = self._refusal(req["uuid"], req["tvds"])
            return {"v": 1, "ok": False, "error": why} if why else {"v": 1, "ok": True}
        return {"v": 1, "ok": False, "error": f"unknown op {op!r}"}

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                try:
                    req = json.loads(buf)
                except ValueError:
                    conn.sendall(b'{"v":1,"ok":false,"error":"malformed request"}\n')
                    continue
                self.requests.append(req)
                time.sleep(self.delay)
                try:
                    conn.sendall(json.dumps(self._answer(req)).encode() + b"\n")
                except OSError:
                    pass        # the client gave up waiting

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
