"""Decoding strategies. Importing the package registers every strategy module listed here."""

from refinery.strategies.registry import (available_strategies, get_strategy, preset_params,  # noqa: F401
                                          register, strategy_class)
from refinery.strategies import conv, edit, masked, remdm, threshold  # noqa: F401,E402

__all__ = ["available_strategies", "get_strategy", "preset_params", "register", "strategy_class"]
