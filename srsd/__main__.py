import sys

from srsd.cli import main

sys.exit(main())
