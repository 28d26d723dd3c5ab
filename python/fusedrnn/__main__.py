import sys

from fusedrnn.cli import main

sys.exit(main())
