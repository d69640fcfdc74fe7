"""The training engine: one trainer, configs, schedules, checkpoints, device/process handling."""

from mimkit.engine.config import PretrainConfig, TrainConfig, load_config, save_config
from mimkit.engine.trainer import NonFiniteLossError, Trainer

__all__ = ["NonFiniteLossError", "PretrainConfig", "TrainConfig", "Trainer", "load_config", "save_config"]
