"""`python -m dnumafs` is the `dnumafs` command."""
import sys

from dnumafs.cli import main

sys.exit(main())
