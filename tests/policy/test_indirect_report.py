"""The indirect-flow diagnostics in groups (indirect_report.py): text, anchor, line budget."""
from __future__ import annotations

from xen_tvd.diagnostics import Collector
from xen_tvd.policy import check_file
from xen_tvd.policy.indirect_report import EXPAND_UP_TO, MAX_LINES
from xen_tvd.policy.verify import verify

from tests.policy.policy_helpers import check_text, errors, flow, mk_policy, pairs_reported, warnings, where


CHAIN6 = """
    version: 1
    tvds:
      t0: {vlan: 10}
      t1: {vlan: 11}
      t2: {vlan: 12}
      t3: {vlan: 13}
      t4: {vlan: 14}
      t5: {vlan: 15}
    flows:
      - {from: t0, to: t1, policy: open}
      - {from: t1, to: t2, policy: open}
      - {from: t2, to: t3, policy: open}
      - {from: t3, to: t4, policy: open}
      - {from: t4, to: t5, policy: open}
"""


def indirect(diags):
    return [d for d in diags if d.code in ("indirect-flow", "reply-flow")]


def test_open_cycle_is_one_error_at_its_first_entry_with_count_links_and_example(tmp_path):
    _, diags = check_text(tmp_path, CHAIN6)
    [e] = errors(diags)
    assert e.code == "indirect-flow" and where(e) == (10, 5)     # the entry t0 -> t1
    assert e.message == (
        "20 closed pairs among 6 TVDs (t0, t1, t2, t3 and 2 more) are bypassed by open paths: "
        "with their replies, 5 open entries (t0 -> t1 at line 10, t1 -> t2 at line 11, "
        "t2 -> t3 at line 12, t3 -> t4 at line 13 and 1 more) connect each of them to every "
        "other; e.g. closed pair t0 -> t2 is bypassed by open path t0 -> t1 -> t2 (t0 -> t1 is "
        "open; t1 -> t2 is open); tvdctl check --all lists every pair")
    [w] = warnings(diags)
    assert w.code == "reply-flow" and where(w) == (10, 5)
    assert w.message == (
        "5 unlisted pairs are closed, but replies of 5 open flows (t0 -> t1 at line 10, "
        "t1 -> t2 at line 11, t2 -> t3 at line 12, t3 -> t4 at line 13 and 1 more) carry data "
        "across them; e.g. replies of the open flow t0 -> t1 carry data t1 -> t0; state the "
        "pairs (open/controlled), or set 'replies: false' on those flows for one-way flows; "
        "tvdctl check --all lists every pair")


def test_all_pairs_reports_each_pair_as_before(tmp_path):
    _, grouped = check_text(tmp_path, CHAIN6)
    _, every = check_file(str(tmp_path / "policy.yaml"), all_pairs=True)
    assert len(errors(every)) == 20 and len(warnings(every)) == 5
    assert pairs_reported(grouped) == pairs_reported(every) == {"open": 20, "guarded": 0,
                                                                "reply": 5}
    assert all(e.message.startswith("closed pair ") for e in errors(every))


def test_small_groups_are_printed_pair_by_pair(tmp_path):
    # a <-> c <-> b: the two closed pairs a -> b and b -> a, one group, printed as two
    _, diags = check_text(tmp_path, """
        version: 1
        tvds: {a: {vlan: 1}, b: {vlan: 2}, c: {vlan: 3}}
        flows:
          - {from: a, to: c, policy: open}
          - {from: c, to: a, policy: open}
          - {from: b, to: c, policy: open}
          - {from: c, to: b, policy: open}
    """)
    assert EXPAND_UP_TO >= 2
    assert sorted(e.message for e in errors(diags)) == [
        "closed pair a -> b is bypassed by open path a -> c -> b (a -> c is open; c -> b is open)",
        "closed pair b -> a is bypassed by open path b -> c -> a (b -> c is open; c -> a is open)"]


def test_guarded_group_is_a_warning_at_the_first_entry_that_links_it(tmp_path):
    # departments x and y, each an open mesh of 3 sending to the collector only through its
    # first TVD (controlled, one-way): four pairs reach the collector through guarded paths
    mesh = "".join(f"  - {{from: {d}{i}, to: {d}{j}, policy: open, replies: false}}\n"
                   for d in "xy" for i in range(3) for j in range(3) if i != j)
    text = ("version: 1\ntvds:\n" + "".join(f"  {d}{i}: {{vlan: {k}}}\n" for k, (d, i) in
                                            enumerate(((d, i) for d in "xy" for i in range(3)),
                                                      start=10))
            + "  log: {vlan: 50}\nflows:\n" + mesh
            + "  - {from: x0, to: log, policy: controlled, replies: false, "
              "allow: [{proto: udp, port: 514}]}\n"
            + "  - {from: y0, to: log, policy: controlled, replies: false, "
              "allow: [{proto: udp, port: 514}]}\n")
    _, diags = check_text(tmp_path, text)
    assert errors(diags) == []
    [w] = warnings(diags)
    assert w.code == "indirect-flow" and where(w) == (23, 5)     # the entry x0 -> log
    assert w.message == (
        "4 closed pairs from 4 TVDs (x1, x2, y1, y2) to 1 TVD (log) are reachable through "
        "guarded paths: through 2 links (controlled x0 -> log at line 23, controlled y0 -> log "
        "at line 24); e.g. closed pair x1 -> log is reachable through guarded path "
        "x1 -> x0 -> log (x1 -> x0 is open; x0 -> log is controlled); make sure the controlled "
        "rules and shared-membership VMs cannot relay them; tvdctl check --all lists every pair")


def test_lines_are_limited_and_the_rest_summed_up_exactly():
    # a one-way chain of 60: 57 groups of pairs between components, more than the budget
    tvds = [f"t{i}" for i in range(60)]
    pol = mk_policy(tvds, [flow(a, b, replies=False) for a, b in zip(tvds, tvds[1:])])
    grouped, every = Collector(), Collector()
    verify(pol, grouped)
    verify(pol, every, all_pairs=True)
    lines = indirect(grouped.items)
    assert len(lines) == MAX_LINES
    summary = lines[-1]
    assert summary.is_error and summary.message.startswith(
        f"{57 - (MAX_LINES - 1)} more groups of indirect flows are not shown (")
    assert pairs_reported(grouped.items) == pairs_reported(every.items) == \
        {"open": 60 * 59 // 2 - 59, "guarded": 0, "reply": 0}


def test_errors_come_before_warnings():
    # a chain of controlled flows (9 guarded pairs) and one of open flows (12 open pairs, and
    # 4 crossed by replies), each one group
    pol = mk_policy(["a", "b", "c", "d", "e", "f", "g", "h", "i"], [
        flow("a", "b", "controlled"), flow("b", "c", "controlled"), flow("c", "d", "controlled"),
        flow("e", "f"), flow("f", "g"), flow("g", "h"), flow("h", "i")])
    diags = Collector()
    verify(pol, diags)
    kinds = [(d.severity, d.code) for d in indirect(diags.items)]
    assert kinds == [("error", "indirect-flow"), ("warning", "indirect-flow"),
                     ("warning", "reply-flow")]
