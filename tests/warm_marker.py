"""Imported by a warm converter child in tests/test_isolation.py: records which process imported it, and when."""
import os
import time
from pathlib import Path

Path(os.environ["EDGEKIT_TEST_MARKER"]).write_text(f"{os.getpid()} {time.time()}")
