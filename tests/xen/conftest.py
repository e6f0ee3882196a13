def pytest_configure(config):
    config.addinivalue_line("markers", "xentier: boots nested Xen 4.17 under qemu (tier 3, many minutes)")
