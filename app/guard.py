"""What the demo may open when it is reachable from other machines.

On a loopback host the demo is its user's own tool and its path fields take any path. On any
other host whoever reaches the port can type into those fields, so :class:`PathGuard` limits
them to the shipped models, the ``--model`` given on the command line, and directories under the
``--runs-dir`` / ``--data-dir`` given there; anything else is refused with a message shown in the UI.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or a name) resolves only to loopback addresses."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:  # a name: loopback only if every address it resolves to is
        addrs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def exposure_warning(host: str) -> str:
    """The warning printed when the demo binds a non-loopback interface."""
    where = "every interface of this machine" if host in ("0.0.0.0", "::", "") else f"{host}"
    return (f"refinery app: warning: --host {host} binds {where}: anyone who can reach this port can run "
            "decodes on this machine and read what the demo shows; the model, run-directory and data-directory "
            "fields are limited to the shipped models, --model, --runs-dir and --data-dir")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


@dataclass
class PathGuard:
    """Checks the demo's path fields. ``restricted`` False (a loopback host) lets every path through."""

    restricted: bool = False
    models: Sequence[str] = ()  # model names / directories allowed besides the shipped ones
    runs_root: Optional[str] = None  # --runs-dir
    data_root: Optional[str] = None  # --data-dir
    _model_dirs: set = field(default_factory=set, init=False, repr=False)

    def __post_init__(self):
        from refinery.core.checkpoint import EMBEDDED

        self._model_dirs = {str(p.resolve()) for p in EMBEDDED.values()}
        for m in self.models:
            path = EMBEDDED.get(str(m), Path(str(m)).expanduser())
            self._model_dirs.add(str(Path(path).resolve()))

    def model(self, name: str) -> str:
        """``name`` when the demo may load it (a shipped name or the command line's model)."""
        if not self.restricted:
            return name
        from refinery.core.checkpoint import EMBEDDED

        path = EMBEDDED.get(str(name), Path(str(name)).expanduser())
        if str(Path(path).resolve()) not in self._model_dirs:
            allowed = sorted(set(EMBEDDED) | {str(m) for m in self.models})
            raise ValueError(f"model {name!r} refused: this demo is reachable from other machines, so it opens "
                             f"only {', '.join(allowed)}")
        return name

    def run_dir(self, path: str) -> str:
        return self._under(path, self.runs_root, "run directory", "--runs-dir")

    def data_dir(self, path: str) -> str:
        return self._under(path, self.data_root, "data directory", "--data-dir")

    def _under(self, path: str, root: Optional[str], what: str, flag: str) -> str:
        if not self.restricted:
            return path
        if root is None:
            raise ValueError(f"{what} {path!r} refused: this demo is reachable from other machines and was "
                             f"started without {flag}, so it opens none")
        resolved, base = Path(path).expanduser().resolve(), Path(root).expanduser().resolve()
        if not _inside(resolved, base):
            raise ValueError(f"{what} {path!r} refused: this demo is reachable from other machines, so it opens "
                             f"only directories under {root} ({flag})")
        return path
