import sys

from peftclip.cli import main

sys.exit(main())
