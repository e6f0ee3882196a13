"""Direct mode (`control: direct`, the default): one standalone tvd-proxy per lab host
(`tvd-proxy run --policy FILE --netns <host ns>`), and every vif attached through it as on
a Xen Dom0: `register` per VM and `vif-online` per NIC (proxies.py), the requests the
toolstack hook and vif-tvd send. The proxy plans its host, admits the vif, reconciles the
host namespace and plugs it; the lab never plans, applies or plugs anything itself.

No master checks evidence here: each VM claims, in its registration, the properties its TVDs'
membership requires (what an administrator writes in xl.cfg for a standalone proxy), as the
hosts' properties come from the policy's capability model. Admission still decides whether the
host may carry the TVD, whether one VM may be in its TVDs together (shared-membership), and
refuses what the planner cannot build.

WireGuard (a host with the `wireguard` capability): the lab stands in for the standalone site's
administrator too. It makes each such host's key pair in that proxy's state directory with
tvd-proxy's own code (what `tvd-proxy wireguard-key` prints) and, where the policy lists no
`hosts.NAME.wireguard-key`, starts the proxies on a copy of the policy with the public keys
filled in (STATE/<name>/policy.yaml). Master mode needs none of this: proxies report their keys.
"""
from __future__ import annotations

import hashlib
import threading

from xen_tvd.lab import proxies
from xen_tvd.lab.common import LabError, Log
from xen_tvd.lab.spec import LabSpec
from xen_tvd.lab.state import Paths
from xen_tvd.lab.topology import LabVm, Topology
from xen_tvd.policy.model import Policy
from xen_tvd.proxy.client import ProxyUnreachable

POLICY_DIGEST = "policy.sha256"    # in the proxy's state directory: the policy it was started on
POLICY_COPY = "policy.yaml"        # in the lab's run directory: the policy with WireGuard keys


def _policy_file(spec: LabSpec, policy: Policy, topo: Topology, paths: Paths) -> str:
    """The policy file the proxies run on: the spec's, or a copy naming the WireGuard public
    keys of hosts it lists none for (their key pairs made as `tvd-proxy wireguard-key` does)."""
    import os
    missing = sorted(h for h in topo.hosts if h in policy.hosts
                     and "wireguard" in policy.hosts[h].capabilities
                     and policy.hosts[h].wireguard_key is None)
    if not missing:
        return spec.policy_path
    import yaml

    from xen_tvd.proxy import wgkey
    with open(spec.policy_path) as f:
        doc = yaml.safe_load(f)
    for h in missing:
        try:
            doc["hosts"][h]["wireguard-key"] = wgkey.ensure(paths.proxy_dir(h))
        except wgkey.KeyFileError as e:
            raise LabError(f"host {h}: {e}") from None
    path = os.path.join(paths.root, POLICY_COPY)
    with open(path + ".tmp", "w") as f:
        f.write(f"# {spec.policy_path} with the lab hosts' WireGuard keys (xen_tvd/lab/direct.py)\n")
        yaml.safe_dump(doc, f, sort_keys=False)
    os.replace(path + ".tmp", path)
    return path


def claimed_properties(policy: Policy, vm: LabVm) -> dict[str, str | None]:
    """What the VM states about itself: every property M(t) of its TVDs asks for, with the
    first assurance kind a requirement accepts (None: any kind will do)."""
    out: dict[str, str | None] = {}
    for nic in vm.nics:
        tvd = policy.tvds.get(nic.tvd)
        for req in (tvd.membership if tvd else ()):
            out.setdefault(req.property, min(req.assurance) if req.assurance else None)
    return out


class Direct:
    def __init__(self, spec: LabSpec, policy: Policy, topo: Topology, log: Log) -> None:
        self.spec, self.policy, self.topo, self.log = spec, policy, topo, log
        self.paths = Paths(spec.name)
        self.failures: dict[str, str] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start (or keep) every host's proxy, in the background: it starts while the lab
        builds the fabric and the VMs. join() waits for them."""
        import os
        os.makedirs(self.paths.root, mode=0o700, exist_ok=True)
        proxies.stop_removed_hosts(self.spec.name, self.topo)
        self.policy_file = _policy_file(self.spec, self.policy, self.topo, self.paths)
        with open(self.policy_file, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        for h in sorted(self.topo.hosts):
            t = threading.Thread(target=self._start, args=(h, digest))
            t.start()
            self._threads.append(t)

    def _start(self, host: str, digest: str) -> None:
        import os
        mark = os.path.join(self.paths.proxy_dir(host), POLICY_DIGEST)

        def same_policy() -> bool:    # a proxy started on another policy is restarted
            try:
                with open(mark) as f:
                    return f.read().strip() == digest
            except OSError:
                return False

        def record() -> None:
            os.makedirs(self.paths.proxy_dir(host), mode=0o700, exist_ok=True)
            with open(mark, "w") as f:
                f.write(digest + "\n")
        try:
            proxies.start(self.spec.name, self.topo, host,
                          ["--policy", self.policy_file], self.log,
                          keep=same_policy, prepare=record)
        except (LabError, OSError) as e:
            self.failures[host] = str(e)

    def join(self, errors: list[str]) -> None:
        for t in self._threads:
            t.join()
        errors.extend(self.failures[h] for h in sorted(self.failures))

    def attach(self, errors: list[str]) -> None:
        """register + vif-online for every VM, the hosts in parallel."""
        results: dict[str, tuple[bool, list[str]] | str] = {}

        def attach_host(host: str) -> None:   # one proxy serialises its requests anyway
            for vm in sorted(v for v in self.topo.vms if self.topo.vms[v].host == host):
                try:
                    props = claimed_properties(self.policy, self.topo.vms[vm])
                    results[vm] = proxies.attach_vm(self.spec.name, self.topo, vm,
                                                    properties=props)
                except (ProxyUnreachable, LabError, OSError) as e:
                    results[vm] = str(e)
        threads = [threading.Thread(target=attach_host, args=(h,)) for h in sorted(self.topo.hosts)
                   if h not in self.failures]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for vm in sorted(self.topo.vms):
            host = self.topo.vms[vm].host
            if host in self.failures:
                errors.append(f"VM {vm}: not attached, the tvd-proxy of {host} is not running")
                continue
            res = results.get(vm, "not attached")
            if isinstance(res, str):
                errors.append(f"VM {vm}: {res}")
            elif not res[0]:   # the proxy's reasons: admission, or a plan it cannot apply
                errors.append(f"VM {vm}: not attached: {'; '.join(res[1])}")
        if not self.failures:
            proxies.forget_removed(self.spec.name, self.topo)

    def entry(self) -> dict:
        """The state's `control` entry."""
        return {"mode": "direct", "dir": self.paths.root}
