"""docs/master-openapi.yaml documents exactly the routes the server has."""
import os

import yaml

from xen_tvd.master.server import ROUTES

from tests.master.master_helpers import ROOT


def test_every_server_route_is_documented_and_every_documented_route_exists():
    with open(os.path.join(ROOT, "docs", "master-openapi.yaml")) as f:
        doc = yaml.safe_load(f)
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops
                  if m in ("get", "put", "post", "delete", "patch")}
    served = {(m, t) for m, t, _, _ in ROUTES}
    assert served - documented == set(), "routes missing from the OpenAPI document"
    assert documented - served == set(), "documented routes the server does not have"
    assert all(p.startswith("/v1/") for _, p in served)


def test_open_routes_are_exactly_the_ones_documented_without_security():
    with open(os.path.join(ROOT, "docs", "master-openapi.yaml")) as f:
        doc = yaml.safe_load(f)
    open_doc = {(m.upper(), p) for p, ops in doc["paths"].items() for m, op in ops.items()
                if op.get("security") == []}
    assert open_doc == {(m, t) for m, t, role, _ in ROUTES if role is None}
