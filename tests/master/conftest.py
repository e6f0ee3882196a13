import os

import pytest

from xen_tvd.master import ca as camod


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
