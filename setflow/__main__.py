import sys

from setflow.cli import main

sys.exit(main())
