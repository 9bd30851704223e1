"""The command line: help, strategy listing, a decode on a tiny checkpoint, one-line errors."""

from __future__ import annotations

import subprocess
import sys

from refinery.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refinery", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_subcommands():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("decode", "strategies"):
        assert cmd in out.stdout


def test_strategies_lists_every_registered_strategy(capsys):
    from refinery.strategies import available_strategies

    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    for name, cls in available_strategies().items():
        assert name in out and cls.description in out


def test_decode_on_a_tiny_checkpoint(tiny_checkpoint, capsys):
    code = main(["decode", "Tom has 3 apples", "--model", str(tiny_checkpoint), "--budget", "1/4", "--gen-length", "8"])
    out = capsys.readouterr().out
    assert code == 0 and "NFE 2/2" in out and "passes 1-2 [mask] unmasked=4" in out


def test_bad_input_is_one_clear_line(tmp_path):
    out = run_cli("decode", "hi", "--model", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "no checkpoint here" in out.stderr
    out = run_cli("decode", "hi", "--strategy", "maskd")
    assert out.returncode == 2 and "Did you mean 'masked'" in out.stderr
