"""Root of the test tree: the markers every tier uses (tests/common holds the shared helpers).

Tier 1 runs by default; `-m "not xentier"` leaves the nested-Xen tier out (scripts/test runs
it in a pytest run of its own); the tier prerequisite policy is tests/common/tiers.py."""


def pytest_configure(config):
    config.addinivalue_line("markers", "vmtier: boots a stock-kernel VM under qemu (tier 2, minutes)")
    config.addinivalue_line("markers", "xentier: boots nested Xen 4.17 under qemu (tier 3, many minutes)")
