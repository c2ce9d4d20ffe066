import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("OMNISTREAM_NO_FLA", "1")


def pytest_configure(config):
    """Parity tests are only meaningful against the pinned transformers version."""
    import transformers

    from reference import PINNED

    if transformers.__version__ != PINNED:
        raise RuntimeError(f"tests compare against transformers {PINNED}, found {transformers.__version__}")
