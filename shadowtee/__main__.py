import sys

from shadowtee.cli import main

sys.exit(main())
