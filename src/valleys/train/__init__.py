"""Instrumented training on an Objective (torch.optim underneath)."""

from valleys.train.loop import OPTIMIZERS, SAMPLING, TrainConfig, TrainResult, train

__all__ = ["OPTIMIZERS", "SAMPLING", "TrainConfig", "TrainResult", "train"]
