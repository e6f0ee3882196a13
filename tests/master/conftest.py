import os

import pytest

from xen_tvd.master import ca as camod
from xen_tvd.master import server
from xen_tvd.master.store import Store

from tests.master.master_helpers import start_master
from tests.master import etcd_helpers


@pytest.fixture(scope="session")
def ca_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ca") / "m")
    camod.init_ca(d, "https://127.0.0.1:8443")
    return d


@pytest.fixture(scope="session")
def the_ca(ca_dir):
    return camod.Ca.load(ca_dir)


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("other") / "m")
    return camod.init_ca(d, "https://127.0.0.1:8443")[0]


@pytest.fixture(scope="session")
def signer(ca_dir):
    with open(os.path.join(ca_dir, "signer.pem")) as f:
        return camod.load_key(os.path.join(ca_dir, "signer.key")), f.read()


@pytest.fixture
def master(tmp_path):
    ns = start_master(tmp_path)
    yield ns
    server.stop(ns.srv, ns.m)


@pytest.fixture
def master_with(tmp_path):
    """master_with(Limits(...)): a master with other connection budgets."""
    started = []

    def start(limits):
        started.append(start_master(tmp_path, limits))
        return started[-1]
    yield start
    for ns in started:
        server.stop(ns.srv, ns.m)


@pytest.fixture(scope="session")
def etcd_one():
    """One etcd member on loopback for the whole session; tests use their own key prefix."""
    if not etcd_helpers.available():
        pytest.skip(etcd_helpers.SKIP_REASON)
    cluster = etcd_helpers.EtcdCluster(1).start()
    yield cluster
    cluster.close()


@pytest.fixture(params=["sqlite", "etcd"])
def open_store(request, tmp_path):
    """open_store() -> a store of the parametrised backend; calling it again reopens the same
    state (a restarted master)."""
    if request.param == "sqlite":
        return lambda: Store(str(tmp_path / "m.db"))
    from xen_tvd.master.store_etcd import EtcdStore
    cluster = request.getfixturevalue("etcd_one")
    url = cluster.url(f"t-{tmp_path.name}-{os.getpid()}")
    return lambda: EtcdStore(url, create=True, meta={"url": "https://127.0.0.1:8443",
                                                     "ca_pin": "0" * 32})
