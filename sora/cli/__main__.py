import sys

from sora.cli import main

sys.exit(main())
