"""omnistream: streaming omni-modal Thinker-Talker models in PyTorch."""

__version__ = "0.1.0"
