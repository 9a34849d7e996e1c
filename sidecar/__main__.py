import sys

from sidecar.wiring.cli import main

sys.exit(main())
