import sys

from gantrain.cli import main

sys.exit(main())
