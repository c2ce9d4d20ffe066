import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("OMNISTREAM_NO_FLA", "1")
