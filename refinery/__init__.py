"""refinery: decoding and refinement strategies for masked diffusion language models on one LLaDA backbone.

What a user imports is this one namespace: ``refinery.core`` (model, decode loop, tasks, sandbox,
training), ``refinery.strategies``, ``refinery.experiments``, ``refinery.analysis``, ``refinery.app``
and the command line (``refinery.cli``). In the repository they are the top-level folders core/,
strategies/, experiments/, analysis/ and app/, mapped under ``refinery`` by setup.cfg's
``package_dir``; nothing else is installed into site-packages.
"""

from pathlib import Path as _Path

# A source checkout used without installing it (``PYTHONPATH=.``, e.g. on a GPU machine): the
# subpackages are the folders beside this one. An install maps them itself, and this adds nothing.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "setup.cfg").is_file() and (_checkout / "core" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821  (the package's own __path__)
