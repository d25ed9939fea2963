import sys

from proxy_addon.cli import main

sys.exit(main())
