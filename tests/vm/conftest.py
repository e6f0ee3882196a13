def pytest_configure(config):
    config.addinivalue_line("markers", "vmtier: boots a stock-kernel VM under qemu (tier 2, minutes)")
