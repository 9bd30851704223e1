"""One import namespace: the project's folders are `refinery.*`, and nothing else of ours is importable."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("core", "strategies", "experiments", "app", "analysis")


def test_setup_cfg_installs_only_the_refinery_namespace():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    packages = cfg["options"]["packages"].split()
    assert packages and all(p == "refinery" or p.startswith("refinery.") for p in packages)
    mapping = dict(line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines())
    assert mapping == {f"refinery.{f}": f for f in FOLDERS}
    on_disk = {"refinery." + str(p.parent.relative_to(REPO)).replace("/", ".")
               for f in FOLDERS for p in (REPO / f).rglob("__init__.py")}
    assert on_disk <= set(packages)  # every subpackage is installed


def test_importing_the_package_loads_no_top_level_core_or_app(tmp_path):
    """From a folder outside the checkout: the install (or PYTHONPATH) gives refinery.*, and only that."""
    code = ("import sys, refinery.core.decode, refinery.strategies, refinery.experiments.runner, "
            "refinery.analysis.report, refinery.cli\n"
            "from refinery.strategies import get_strategy\n"
            "get_strategy('edit')\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(FOLDERS)!r}))")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_second_copy_of_a_module_under_a_top_level_name():
    """A stray ``core.x`` string (monkeypatch targets, lazy imports) would import a second copy of the module
    beside ``refinery.core.x`` and patch the wrong one: nothing imported so far in this process did."""
    assert sorted({m.split(".")[0] for m in sys.modules} & set(FOLDERS)) == []
