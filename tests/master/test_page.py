"""tvd-master's read-only page (docs/master.md, "The page"), in a real headless Chromium
(Debian's chromium and chromium-driver, which scripts/bootstrap installs): the page loads from a
real `tvd-master serve`, its SVG renders with real sizes, a screenshot is taken, and the numbers
on it match the master's API."""
from __future__ import annotations

import os
import urllib.request

import pytest

from xen_tvd.master.cli import main as master_cli
from xen_tvd.master.page import AUDIT_ROWS, _last_audit_seq
from xen_tvd.master.store import Store
from xen_tvd.policy import check_file
from xen_tvd.policy.render import matrix_json

from tests.master.master_helpers import (POLICY, REPORT, Enrolled, MasterProcess, admin_client, free_port,
                            init_dir, raw_request)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLOWS = """\
flows:
  - {from: alpha, to: beta, policy: open}
  - {from: beta, to: alpha, policy: open}
  - {from: alpha, to: gamma, policy: controlled, allow: [{proto: tcp, port: 443}]}
"""
HOSTILE_NAME = '<script>alert(1)</script>"x'


def _vm(n: int) -> str:
    return f"{n:08d}-0000-4000-8000-000000000000"


@pytest.fixture
def site(tmp_path):
    d = str(tmp_path / "m")
    url = init_dir(d)
    (tmp_path / "p.yaml").write_text(POLICY + FLOWS)
    assert master_cli(["--dir", d, "policy", "push", str(tmp_path / "p.yaml")]) == 0
    page_port = free_port()
    proc = MasterProcess(d, url, str(tmp_path / "master.log"),
                         ["--page-listen", f"127.0.0.1:{page_port}"])
    h1 = Enrolled(d, url, "h1", str(tmp_path / "h1"))
    h2 = Enrolled(d, url, "h2", str(tmp_path / "h2"))
    for h in (h1, h2):
        h.client.put_capabilities(h.host, dict(REPORT, nics=[{"network": "lan", "nic": "eth0",
                                  "address": "10.0.0.1" if h is h1 else "10.0.0.2"}]))
        assert h.client.bundle(h.host, 0, wait=5) is not None
    h1.client.post_audit([
        {"id": "a1", "event": "admitted", "vm": _vm(1), "name": "web1", "tvd": "alpha",
         "ifname": "vif1.0"},
        {"id": "a2", "event": "admitted", "vm": _vm(2), "name": HOSTILE_NAME, "tvd": "alpha",
         "ifname": "vif2.0"},
        {"id": "a3", "event": "denied", "vm": _vm(3), "name": "db", "tvd": "beta",
         "ifname": "vif3.0", "reason": "missing hv-integrity"},
        {"id": "a4", "event": "session-expired", "vm": _vm(4), "name": "old", "tvd": "gamma",
         "ifname": "vif4.0"}])
    admin = admin_client(d, url, str(tmp_path))
    admin.call("POST", "/v1/hosts/h2/revoke")
    yield {"dir": d, "url": url, "tmp": tmp_path, "proc": proc, "admin": admin, "h1": h1,
           "page": f"http://127.0.0.1:{page_port}/", "policy": str(tmp_path / "p.yaml")}
    proc.stop()


@pytest.fixture
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are missing: scripts/bootstrap "
                    "installs them (tier 1)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1500,1400"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield drv
    drv.quit()


def test_the_page_renders_in_chromium_and_its_numbers_match_the_api(site, browser):
    from selenium.webdriver.common.by import By
    admin = site["admin"]
    hosts = {h["host"]: h for h in admin.call("GET", "/v1/hosts")["hosts"]}
    adm = admin.call("GET", "/v1/admissions")["admissions"]
    audit = admin.call("GET", "/v1/audit?limit=10000")["events"]
    tvds = {t["name"]: t for t in admin.call("GET", "/v1/tvds")["tvds"]}
    policy, _ = check_file(site["policy"])
    mj = matrix_json(policy)

    browser.get(site["page"])
    assert browser.title.startswith("tvd-master")
    # the SVG rendered: real boxes, one cell per (sender, receiver), kinds as the policy says
    for svg in ("graph-svg", "matrix-svg"):
        el = browser.find_element(By.ID, svg)
        assert (el.rect["width"], el.rect["height"]) == (
            int(el.get_attribute("width")), int(el.get_attribute("height"))) and \
            el.rect["width"] > 100, (svg, el.rect)
    names = mj["tvds"] + sorted(mj["externals"])
    cells = browser.find_elements(By.CSS_SELECTOR, "#matrix-svg g.cell")
    assert len(cells) == len(names) ** 2
    for c in cells:
        assert c.get_attribute("data-kind") == mj["matrix"][c.get_attribute("data-from")][
            c.get_attribute("data-to")]
        assert c.find_element(By.TAG_NAME, "rect").rect["width"] > 10
    edges = {(e.get_attribute("data-from"), e.get_attribute("data-to"),
              e.get_attribute("data-kind"))
             for e in browser.find_elements(By.CSS_SELECTOR, "#graph-svg line.edge")}
    assert edges == {(a, b, mj["matrix"][a][b]) for a in names for b in names
                     if a != b and mj["matrix"][a][b] != "closed"}
    assert ("alpha", "gamma", "controlled") in edges and ("beta", "alpha", "open") in edges
    for n in browser.find_elements(By.CSS_SELECTOR, "#graph-svg g.node"):
        assert int(n.get_attribute("data-hosts")) == len(tvds[n.get_attribute("data-tvd")]["hosts"])

    # hosts: state and bundle generation as GET /v1/hosts says
    rows = browser.find_elements(By.CSS_SELECTOR, "#hosts tbody tr")
    assert {r.get_attribute("data-host"): (r.get_attribute("data-state"),
                                           int(r.get_attribute("data-generation")))
            for r in rows} == {h: (v["state"], v["generation"]) for h, v in hosts.items()}
    assert hosts["h2"]["state"] == "revoked" and hosts["h1"]["generation"] >= 1
    summary = browser.find_element(By.ID, "summary")
    assert int(summary.get_attribute("data-hosts-enrolled")) == 1
    assert int(summary.get_attribute("data-nics-admitted")) == sum(
        a["state"] == "admitted" for a in adm) == 2
    # VMs per TVD as GET /v1/admissions says
    for h in browser.find_elements(By.CSS_SELECTOR, "h3.tvd"):
        t = h.get_attribute("data-tvd")
        assert int(h.get_attribute("data-admitted")) == sum(
            a["tvd"] == t and a["state"] == "admitted" for a in adm)
    vm_rows = browser.find_elements(By.CSS_SELECTOR, "tr.vm")
    assert sorted((r.get_attribute("data-vm"), r.get_attribute("data-state")) for r in vm_rows) \
        == sorted((a["vm"], a["state"]) for a in adm)
    # a VM name a host reported is text, never markup
    assert HOSTILE_NAME in browser.find_element(By.TAG_NAME, "body").text
    assert browser.find_elements(By.TAG_NAME, "script") == []
    # recent audit: newest first, ending at the API's newest record
    seqs = [int(r.get_attribute("data-seq"))
            for r in browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")]
    assert seqs == sorted((e["seq"] for e in audit), reverse=True)[:AUDIT_ROWS]

    shot = str(site["tmp"] / "master-page.png")
    assert browser.save_screenshot(shot)
    with open(shot, "rb") as f:
        png = f.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    keep = os.environ.get("TVD_PAGE_SCREENSHOT")     # docs/master-page.png was made so
    if keep:
        browser.set_window_size(1500, browser.execute_script(
            "return document.body.scrollHeight") + 40)
        browser.save_screenshot(keep)


def test_the_page_over_tls_needs_an_admin_certificate_and_forbids_scripts(site):
    import ssl
    admin, h1 = site["admin"], site["h1"]
    # MasterClient decodes JSON; the page is HTML, so read it raw with the admin's context
    st, raw = raw_request(site["url"], admin.ctx, "GET", "/v1/page")
    assert st == 200 and raw.startswith(b"<!DOCTYPE html>")
    import http.client
    host, port = site["url"].rsplit("//", 1)[1].rsplit(":", 1)
    c = http.client.HTTPSConnection(host, int(port), context=admin.ctx, timeout=10)
    c.request("GET", "/v1/page")
    r = c.getresponse()
    assert r.getheader("Content-Type").startswith("text/html")
    assert "default-src 'none'" in r.getheader("Content-Security-Policy")
    c.close()
    assert h1.client.request("GET", "/v1/page")[0] == 403
    anon = ssl.create_default_context(cadata=open(os.path.join(site["dir"], "ca.pem")).read())
    anon.check_hostname = False
    assert raw_request(site["url"], anon, "GET", "/v1/page")[0] == 401
    # the loopback listener serves only the page
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(site["page"] + "v1/hosts", timeout=10)
    assert e.value.code == 404


def test_the_page_listener_takes_loopback_addresses_only(tmp_path):
    import subprocess
    import sys
    from tests.master.master_helpers import ROOT
    d = str(tmp_path / "m")
    url = init_dir(d)
    for bad in ("10.0.0.1:8080", "0.0.0.0:8080", "localhost:8080", "127.0.0.1"):
        r = subprocess.run([sys.executable, "-m", "xen_tvd.master", "--dir", d, "serve",
                            "--listen", url.rsplit("//", 1)[1], "--page-listen", bad],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 2 and "--page-listen" in r.stderr, (bad, r.stderr)
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 64, 65])
def test_the_newest_audit_record_is_found_through_the_store_reads(tmp_path, n):
    store = Store(str(tmp_path / "m.db"))
    for i in range(n):
        store.audit("test", "x", {"i": i})
    last = store.audit_events(0, 10_000)[-1]["seq"] if n else 0
    assert _last_audit_seq(store) == last
