"""Where things are in the source tree (tests run from a checkout, not from the wheel)."""
from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
XL_CONFIGS = os.path.join(REPO, "xl-configs")


def xl_config(name: str) -> str:
    """An example file users copy (xl-configs/NAME)."""
    return os.path.join(XL_CONFIGS, name)
