import sys

from occlum_rules.cli import main

sys.exit(main())
