import sys

from fedplug.cli import main

sys.exit(main())
