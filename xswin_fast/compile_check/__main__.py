"""``python -m xswin_fast.compile_check``."""
import sys

from .cli import main

sys.exit(main())
