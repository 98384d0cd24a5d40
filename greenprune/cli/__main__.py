"""`python -m greenprune.cli`: the same as the `greenprune` command."""
import sys

from . import main

sys.exit(main())
