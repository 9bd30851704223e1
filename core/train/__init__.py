"""Training harness: Stage 1 pretraining, Stage 2 SFT, Stage 3 mask-and-edit, R2FT (``refinery train``).

    from refinery.core.train import Trainer, load_config
    Trainer(load_config("experiments/train/tiny_sft.yaml")).train(resume=True)
"""

from refinery.core.train.config import TrainConfig, load_config  # noqa: F401


def __getattr__(name):
    # The engine pulls in torch/datasets/strategies; import it only when asked for.
    if name == "Trainer":
        from refinery.core.train.engine import Trainer

        return Trainer
    raise AttributeError(name)


__all__ = ["TrainConfig", "Trainer", "load_config"]
