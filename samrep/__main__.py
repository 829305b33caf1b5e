import sys

from samrep.cli import main

sys.exit(main())
