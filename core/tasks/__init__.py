"""Tasks: the embedded generated ones (arith, pycode) and the real benchmarks (gsm8k, math500,
humaneval, mbpp). Importing the package registers them all; see :mod:`core.tasks.base`."""

from refinery.core.tasks.base import TASKS, Example, Score, Task, get_task, register_task  # noqa: F401
from refinery.core.tasks import arith, benchmarks, pycode  # noqa: F401,E402
from refinery.core.tasks.embedded import EMBEDDED_TASKS, embedded_corpus  # noqa: F401,E402
