import sys

from xen_tvd.master.cli import main

sys.exit(main())
