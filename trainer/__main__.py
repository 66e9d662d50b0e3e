import sys

from trainer.cli import entry

sys.exit(entry())
