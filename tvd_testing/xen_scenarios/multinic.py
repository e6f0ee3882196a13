"""Tier-3 scenario: one domU with two NICs in two TVDs under real netback.

The tier's policy lets a VM be in beta and gamma together (`shared-membership: [[beta,
gamma]]`). `dual` gets eth0 on beta and eth1 on gamma, `gamma1` eth0 on gamma; beta (from
`positive`) is the beta peer. The checks: both of dual's vifs admitted, each on its own TVD's
vSwitch; dual reaches beta on eth0 and gamma1 on eth1; nothing crosses between the two TVDs
through dual or the host: gamma1 has an on-link route to beta's subnet,
so its ARP for beta goes out on gamma's vSwitch, where only a host that joined the two vSwitches
(or dual forwarding between its NICs) would answer; dual and alpha1 (another TVD, same IP
subnet as dual's eth0) never reach each other. Then dual and
gamma1 are destroyed and both of dual's vifs must be gone.
"""
from __future__ import annotations

import time

from tvd_testing.xen_scenarios.lifecycle import gone, on_tvd, pings, vif_state, wait_gone, wait_on_tvd
from tvd_testing.xenscenario import scenario
from tvd_testing.xentier import GUESTS, sh

BETA_IP = GUESTS["beta"][0]            # 10.9.0.3, on beta's subnet 10.9.0.0/24
ALPHA1_IP = GUESTS["alpha1"][0]
DUAL_IP0, DUAL_IP1, GAMMA1_IP = "10.9.0.7", "10.9.1.8", "10.9.1.6"
MACS = {"dual0": "00:16:3e:7a:02:01", "dual1": "00:16:3e:7a:02:02", "gamma1": "00:16:3e:7a:02:03"}


@scenario("twonics", needs=("positive",), checks=(
    "create-dual", "create-gamma1", "dual-vifs-on-their-tvds", "dual-reaches-beta-on-eth0",
    "dual-reaches-gamma-on-eth1", "no-bridging-between-tvds", "other-tvd-reaches-nothing",
    "destroy-cleans-both-vifs"))
def twonics(d, sc):
    if "beta" not in d.domains():
        sc.error = "beta is not running (positive scenario failed)"
        return
    cfgs = {
        "dual": d.write_cfg("dual", [f"mac={MACS['dual0']}, bridge=tvd:beta, script=vif-tvd",
                                     f"mac={MACS['dual1']}, bridge=tvd:gamma, script=vif-tvd"],
                            f"tvd_ip={DUAL_IP0} tvd_ip1={DUAL_IP1} tvd_peers={BETA_IP},{GAMMA1_IP},{ALPHA1_IP}"),
        "gamma1": d.write_cfg("gamma1", [f"mac={MACS['gamma1']}, bridge=tvd:gamma, script=vif-tvd"],
                              f"tvd_ip={GAMMA1_IP} tvd_onlink=10.9.0.0/24 tvd_peers={DUAL_IP1},{BETA_IP}"),
    }
    import concurrent.futures as cf
    with cf.ThreadPoolExecutor(2) as ex:
        futs = {n: ex.submit(sh, ["xl", "create", str(c)], 300) for n, c in cfgs.items()}
        for n, f in futs.items():
            rc, out = f.result()
            sc.check(f"create-{n}", rc == 0, f"rc={rc}: {out}")
    doms = d.domains()
    if "dual" not in doms or "gamma1" not in doms:
        return
    dual, g1 = doms["dual"], doms["gamma1"]
    st = {"eth0": wait_on_tvd(d, dual, "beta"), "eth1": vif_state(d, dual, 1), "gamma1": wait_on_tvd(d, g1, "gamma")}
    sc.facts["vifs"] = st
    sc.check("dual-vifs-on-their-tvds", on_tvd(st["eth0"], "beta") and on_tvd(st["eth1"], "gamma")
             and on_tvd(st["gamma1"], "gamma"), st)
    t = time.monotonic()
    ok = {}
    while time.monotonic() - t < 240:
        dual_txt, g1_txt = d.console_text("dual"), d.console_text("gamma1")
        ok = {"dual->beta": [r for _, r in pings(dual_txt, BETA_IP)],
              "dual->gamma1": [r for _, r in pings(dual_txt, GAMMA1_IP)],
              "dual->alpha1": [r for _, r in pings(dual_txt, ALPHA1_IP)],
              "gamma1->dual": [r for _, r in pings(g1_txt, DUAL_IP1)],
              "gamma1->beta": [r for _, r in pings(g1_txt, BETA_IP)]}
        if 1 in ok["dual->beta"] and 1 in ok["dual->gamma1"] and len(ok["gamma1->beta"]) >= 2 \
                and len(ok["dual->alpha1"]) >= 2:
            break
        time.sleep(2)
    sc.facts["pings"] = ok
    sc.check("dual-reaches-beta-on-eth0", 1 in ok["dual->beta"], ok)
    sc.check("dual-reaches-gamma-on-eth1", 1 in ok["dual->gamma1"] and 1 in ok["gamma1->dual"], ok)
    # gamma1 ARPs for beta's address on gamma's vSwitch: only a host joining beta and gamma
    # (or dual forwarding between its NICs) could answer
    sc.check("no-bridging-between-tvds", len(ok["gamma1->beta"]) >= 2 and 1 not in ok["gamma1->beta"], ok)
    # dual and alpha1 (TVD alpha) on one IP subnet: a ping needs both directions
    sc.check("other-tvd-reaches-nothing", len(ok["dual->alpha1"]) >= 2 and 1 not in ok["dual->alpha1"], ok)
    outs = {n: sh(["xl", "destroy", n], 180) for n in ("dual", "gamma1")}
    left = {"dual.0": wait_gone(d, dual), "gamma1.0": wait_gone(d, g1)}
    left["dual.1"] = vif_state(d, dual, 1)
    left["dual.1"]["backend"] = d.xs_read(f"/local/domain/0/backend/vif/{dual}/1/state")
    sc.check("destroy-cleans-both-vifs", all(rc == 0 for rc, _ in outs.values()) and all(gone(v) for v in left.values()),
             f"{outs}; {left}")
