"""Training: the shared loop (resumable, FSDP2 under torchrun), loss-curve plots, the paper's stages."""

from .loop import History, Stage, TrainConfig, TrainError, learning_rate, train

__all__ = ["History", "Stage", "TrainConfig", "TrainError", "learning_rate", "train"]
