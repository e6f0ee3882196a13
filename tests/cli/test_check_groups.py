"""tvdctl check on policies with many bypassed closed pairs: grouped by default, --all per pair."""
from __future__ import annotations

import json
import re

from tests.cli.cli_helpers import diag_lines, no_traceback, tvdctl


def open_chain(n: int) -> str:
    """t0 -> t1 -> ... open (with replies); every other ordered pair closed (unlisted)."""
    tvds = "".join(f"  t{i}: {{vlan: {i + 2}}}\n" for i in range(n))
    flows = "".join(f"  - {{from: t{i}, to: t{i + 1}, policy: open}}\n" for i in range(n - 1))
    return f"version: 1\ntvds:\n{tvds}flows:\n{flows}"


def test_chain_of_300_is_reported_in_a_few_lines_with_its_counts(tmp_path):
    (tmp_path / "chain.yaml").write_text(open_chain(300))
    p = tvdctl("check", "chain.yaml", cwd=tmp_path)
    no_traceback(p)
    assert p.returncode == 1
    lines = diag_lines(p, "chain.yaml")
    assert len(lines) <= 50
    # 300 * 299 ordered pairs: 299 open entries, 299 pairs crossed only by their replies
    # (warnings), all the rest bypassed through the chain (errors)
    [err] = [ln for ln in lines if ": error: " in ln]
    assert re.match(r"^chain\.yaml:304:5: error: 89102 closed pairs among 300 TVDs .* "
                    r"e\.g\. closed pair t0 -> t2 is bypassed by open path t0 -> t1 -> t2 ", err)
    [warn] = [ln for ln in lines if ": warning: " in ln]
    assert warn.startswith("chain.yaml:304:5: warning: 299 unlisted pairs are closed, but "
                           "replies of 299 open flows ")
    assert p.stderr.strip() == "1 file(s): 1 error(s), 1 warning(s)"


def test_all_lists_every_pair_the_groups_stand_for(tmp_path):
    (tmp_path / "chain.yaml").write_text(open_chain(30))
    grouped = tvdctl("check", "chain.yaml", cwd=tmp_path)
    every = tvdctl("check", "--all", "chain.yaml", cwd=tmp_path)
    no_traceback(every)
    assert grouped.returncode == every.returncode == 1
    [err] = [ln for ln in diag_lines(grouped, "chain.yaml") if ": error: " in ln]
    count = int(re.search(r": error: (\d+) closed pairs ", err)[1])
    lines = diag_lines(every, "chain.yaml")
    pairs = [re.search(r"error: closed pair (\S+) -> (\S+) is bypassed", ln) for ln in lines
             if ": error: " in ln]
    assert count == len(pairs) == len({(m[1], m[2]) for m in pairs}) == 30 * 29 - 2 * 29
    assert sum(": warning: unlisted pair " in ln for ln in lines) == 29
    assert every.stderr.strip() == f"1 file(s): {count} error(s), 29 warning(s)"


def test_all_with_json(tmp_path):
    (tmp_path / "chain.yaml").write_text(open_chain(5))
    p = tvdctl("check", "--all", "--json", "chain.yaml", cwd=tmp_path)
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert out["errors"] == 5 * 4 - 2 * 4 and out["warnings"] == 4
    grouped = json.loads(tvdctl("check", "--json", "chain.yaml", cwd=tmp_path).stdout)
    assert grouped["errors"] == 1 and grouped["warnings"] == 1
