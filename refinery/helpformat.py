"""A help formatter that shows each option's default where it says something."""

from __future__ import annotations

import argparse


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Like ``ArgumentDefaultsHelpFormatter``, minus the noise: no "(default: None)", "(default: False)" or
    "(default: [])", and nothing added where the help text already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == [] \
                or action.default is argparse.SUPPRESS or "default" in text.lower():
            return text
        return super()._get_help_string(action)
