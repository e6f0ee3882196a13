"""python3 -m xen_tvd.lab up|verify|status|exec|down SPEC  (same as `tvdctl lab ...`)."""
import sys

from xen_tvd.lab.cli import main

sys.exit(main())
