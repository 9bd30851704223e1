"""Every routine mistake: one line on stderr, exit 2, no traceback, nothing left behind or lost.

Most cases run in process through ``refinery.cli.main`` (fast); two run as subprocesses to prove the
exit code and the absence of a traceback end to end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from refinery.core.model import LLaDAConfig, LLaDAModel
from refinery.cli import main
from tiny_models import save_tiny_checkpoint, single_thread


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():  # tiny models: one thread is fastest on a shared machine
        yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """The suite's tiny checkpoint, mask-only, with positions ending at 192 (so a long prompt is easy to make)."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", next_token_head=False,
                                max_sequence_length=192)


def copy_ckpt(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def one_line_error(capsys, *needles: str) -> str:
    """The captured stderr is exactly one error line holding every needle; returns it."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("refinery "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def small_config(model: Path, **overrides) -> dict:
    cfg = dict(name="small", model=str(model), tasks=[{"name": "arith", "n": 2}],
               strategies=[{"name": "masked"}], budgets=["1/4"], gen_length=8, batch_size=2, device="cpu",
               score_workers=1)
    cfg.update(overrides)
    return cfg


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def no_cuda(monkeypatch):
    """Make the machine look CUDA-less even where a GPU is present."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ------------------------------------------------------------------------------ device, out, lengths

def test_device_without_cuda(ckpt, capsys, no_cuda):
    assert main(["decode", "hi", "--model", str(ckpt), "--device", "cuda", "--gen-length", "8"]) == 2
    one_line_error(capsys, "--device cuda", "CUDA is not available")
    assert main(["decode", "hi", "--model", str(ckpt), "--device", "tpu", "--gen-length", "8"]) == 2
    one_line_error(capsys, "--device tpu")


def test_gpu_index_beyond_the_machine(monkeypatch):
    """On a one-GPU machine ``cuda:7`` was an 'invalid device ordinal' traceback from inside model.to()."""
    from refinery.core.checkpoint import check_device
    from refinery.core.errors import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda:0") == "cuda:0" and check_device("cuda") == "cuda" and check_device("auto") == "auto"
    with pytest.raises(UsageError, match=r"--device cuda:7: no such GPU; this machine has 1 \(cuda:0..cuda:0\)"):
        check_device("cuda:7")


def test_failed_start_leaves_nothing_and_the_corrected_command_runs(ckpt, tmp_path, capsys, no_cuda):
    cfg = write_yaml(tmp_path / "c.yaml", small_config(ckpt))
    run = tmp_path / "run"
    assert main(["ablate", str(cfg), "--out", str(run), "--device", "cuda", "--no-progress"]) == 2
    one_line_error(capsys, "device", "CUDA is not available")
    assert not run.exists()
    assert main(["ablate", str(cfg), "--out", str(run), "--no-progress"]) == 0
    assert "2 rows" in capsys.readouterr().out
    before = (run / "rows.jsonl").read_bytes()
    # the same mistake on an existing run: refused, rows untouched
    assert main(["ablate", str(cfg), "--out", str(run), "--device", "cuda", "--no-progress"]) == 2
    one_line_error(capsys, "CUDA is not available")
    assert (run / "rows.jsonl").read_bytes() == before


def test_a_start_that_fails_after_opening_the_run_removes_it(ckpt, tmp_path, capsys):
    # arith prompts of ~120 tokens + 80 generated > max_sequence_length 192: refused at the first batch
    cfg = write_yaml(tmp_path / "c.yaml", small_config(ckpt, gen_length=80, budgets=["1/1"]))
    run = tmp_path / "run"
    assert main(["ablate", str(cfg), "--out", str(run), "--no-progress"]) == 2
    one_line_error(capsys, "max_sequence_length 192", "gen_length 80")
    assert not run.exists()


def test_gen_length_beyond_the_model_is_caught_by_validate_only(ckpt, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", small_config(ckpt, gen_length=192, budgets=["1/1"]))
    assert main(["ablate", str(cfg), "--validate-only"]) == 2
    one_line_error(capsys, str(cfg), "gen_length", "max_sequence_length is 192")


def test_out_pointing_at_a_file(ckpt, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", small_config(ckpt))
    (tmp_path / "afile").write_text("keep me")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert main(["ablate", str(cfg), "--out", str(out), "--no-progress"]) == 2
        one_line_error(capsys, str(out), "is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "keep me"


def test_gen_length_and_budget_under_one_pass(ckpt, capsys):
    assert main(["decode", "hi", "--model", str(ckpt), "--gen-length", "-5"]) == 2
    one_line_error(capsys, "--gen-length -5")
    assert main(["decode", "hi", "--model", str(ckpt), "--gen-length", "8", "--budget", "1/1000"]) == 2
    one_line_error(capsys, "budget 1/1000", "effective NFE 1", "smallest budget", "1/8")
    assert main(["decode", "hi", "--model", str(ckpt), "--gen-length", "8", "--budget", "1/8"]) == 0
    assert "NFE 1/1" in capsys.readouterr().out


def test_ablate_budget_under_one_pass_names_the_key(ckpt, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", small_config(ckpt, budgets=["1/4", "1/1000"]))
    assert main(["ablate", str(cfg), "--validate-only"]) == 2
    one_line_error(capsys, str(cfg), "budgets[1]", "1/1000", "1/8")


def test_prompt_longer_than_the_model_is_refused_by_name(ckpt, capsys):
    long = "Tom has 3 apples " * 80
    assert main(["decode", long, "--model", str(ckpt), "--gen-length", "8"]) == 2
    line = one_line_error(capsys, "max_sequence_length 192", "gen_length 8")
    assert "prompt of" in line


def test_generate_refuses_prompt_plus_gen_length_over_the_limit():
    from refinery.core.decode import generate

    model = LLaDAModel(LLaDAConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, mask_token_id=63,
                                   eos_token_id=1, max_sequence_length=24)).eval()
    with pytest.raises(ValueError, match=r"prompt of 20 tokens \+ gen_length 8 = 28 .* max_sequence_length 24"):
        generate(model, [[5] * 20], 8, "masked", "1/1")
    assert generate(model, [[5] * 16], 8, "masked", "1/1").tokens.shape == (1, 8)  # exactly at the limit


# ------------------------------------------------------------------------------ checkpoints

def test_truncated_safetensors_names_the_file(ckpt, tmp_path, capsys):
    bad = copy_ckpt(ckpt, tmp_path / "trunc")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["decode", "hi", "--model", str(bad), "--gen-length", "8"]) == 2
    one_line_error(capsys, str(weights), "truncated")
    cfg = write_yaml(tmp_path / "c.yaml", small_config(bad))
    assert main(["ablate", str(cfg), "--validate-only"]) == 2
    one_line_error(capsys, str(weights), "truncated", "model")
    weights.write_bytes((ckpt / "model.safetensors").read_bytes() + b"junk")
    assert main(["ablate", str(cfg), "--validate-only"]) == 2
    one_line_error(capsys, "4 bytes after the data")


def test_pickle_only_directory_is_refused(ckpt, tmp_path, capsys):
    bad = copy_ckpt(ckpt, tmp_path / "pickled", skip=("model.safetensors",))
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    assert main(["decode", "hi", "--model", str(bad), "--gen-length", "8"]) == 2
    one_line_error(capsys, str(bad), "pytorch_model.bin", "only safetensors", "never unpickles")
    (bad / "config.json").unlink()
    assert main(["decode", "hi", "--model", str(bad), "--gen-length", "8"]) == 2
    one_line_error(capsys, "pytorch_model.bin", "never unpickles")


def test_invalid_config_json(ckpt, tmp_path, capsys):
    bad = copy_ckpt(ckpt, tmp_path / "badcfg")
    (bad / "config.json").write_text('{"vocab_size": 300,\n  oops}')
    assert main(["decode", "hi", "--model", str(bad), "--gen-length", "8"]) == 2
    one_line_error(capsys, str(bad / "config.json") + ":2", "not valid JSON")
    data = json.loads((ckpt / "config.json").read_text())
    del data["d_model"]
    (bad / "config.json").write_text(json.dumps(data))
    cfg = write_yaml(tmp_path / "c.yaml", small_config(bad))
    assert main(["ablate", str(cfg), "--validate-only"]) == 2
    one_line_error(capsys, "config.json", "missing field(s) d_model")


def test_missing_tokenizer_says_so(ckpt, tmp_path, capsys):
    bad = copy_ckpt(ckpt, tmp_path / "notok", skip=("tokenizer.json", "tokenizer_config.json"))
    assert main(["decode", "hi", "--model", str(bad), "--gen-length", "8"]) == 2
    line = one_line_error(capsys, f"no tokenizer in {bad}", "tokenizer.json")
    assert "sentencepiece" not in line
    cfg = write_yaml(tmp_path / "c.yaml", small_config(bad))
    assert main(["ablate", str(cfg), "--validate-only"]) == 2
    one_line_error(capsys, "no tokenizer in")


def test_validate_only_passes_a_good_config(ckpt, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", small_config(ckpt))
    assert main(["ablate", str(cfg), "--validate-only"]) == 0
    assert ": ok (1 tasks" in capsys.readouterr().out


# ------------------------------------------------------------------------------ data and encodings

def test_benchmark_without_data_dir_fails_fast_without_the_network(ckpt, tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "datasets", type(sys)("datasets"))
    sys.modules["datasets"].load_dataset = lambda *a, **k: calls.append(a)
    cfg = write_yaml(tmp_path / "c.yaml", small_config(ckpt, tasks=[{"name": "gsm8k", "n": 2}]))
    for extra in (["--validate-only"], ["--out", str(tmp_path / "run"), "--no-progress"]):
        assert main(["ablate", str(cfg), *extra]) == 2
        one_line_error(capsys, "tasks[0].kwargs.data_dir", "task 'gsm8k' needs data_dir", "from_hub")
    assert not (tmp_path / "run").exists() and calls == []
    empty = tmp_path / "data"
    empty.mkdir()
    cfg = write_yaml(tmp_path / "d.yaml", small_config(ckpt, tasks=[
        {"name": "gsm8k", "n": 2, "kwargs": {"data_dir": str(empty)}}]))
    assert main(["ablate", str(cfg), "--validate-only"]) == 2
    one_line_error(capsys, "tasks[0].kwargs.data_dir", "gsm8k/test.jsonl")


def test_non_utf8_files_are_named(ckpt, tmp_path, capsys, caplog):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(yaml.safe_dump(small_config(ckpt)).encode() + b"# caf\xe9\n")
    assert main(["ablate", str(latin), "--validate-only"]) == 2
    one_line_error(capsys, str(latin), "not UTF-8", "0xe9")
    train = tmp_path / "train.yaml"
    train.write_bytes(b"stage: pretrain\n# caf\xe9\n")
    assert main(["train", str(train)]) == 2
    one_line_error(capsys, str(train), "not UTF-8")
    tune = tmp_path / "tune.yaml"
    tune.write_bytes(b"protocol: {trials: 2}\n# caf\xe9\n")
    assert main(["tune", str(tune), "--validate-only"]) == 2
    one_line_error(capsys, str(tune), "not UTF-8")
    cfg = write_yaml(tmp_path / "c.yaml", small_config(ckpt))
    run = tmp_path / "run"
    assert main(["ablate", str(cfg), "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    rows = run / "rows.jsonl"
    with open(rows, "ab") as f:
        f.write(b'{"key": "caf\xe9"}\n')
    before = rows.read_bytes()
    # report's policy for damaged rows: count and show them (header and stderr), never refuse the run
    assert main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert any(str(rows) in r.getMessage() and "line 3" in r.getMessage() for r in caplog.records)
    assert "1 garbage line" in (tmp_path / "rep" / "report.md").read_text()
    assert rows.read_bytes() == before


# ------------------------------------------------------------------------------ the demo

def test_busy_port_is_one_line(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["app", "--port", str(port)]) == 2
    one_line_error(capsys, f"--port {port}", "cannot listen")


def test_exposed_host_warns_and_restricts_paths(tmp_path, capsys, monkeypatch):
    import gradio as gr

    import refinery.app.demo

    seen = {}

    def fake_start(demo, host, port):
        seen["host"] = host
        return f"http://{host}:{port}/"

    def fake_build(**kw):
        seen.update(kw)
        return gr.Blocks()

    monkeypatch.setattr(refinery.app.demo, "start", fake_start)
    monkeypatch.setattr(refinery.app.demo, "build_demo", fake_build)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
    assert main(["app", "--host", "0.0.0.0", "--runs-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "warning: --host 0.0.0.0 binds every interface" in err and "Traceback" not in err
    guard = seen["guard"]
    assert guard.restricted and guard.run_dir(str(tmp_path / "a")) == str(tmp_path / "a")
    with pytest.raises(ValueError, match="only directories under"):
        guard.run_dir("/etc")
    with pytest.raises(ValueError, match="started without --data-dir"):
        guard.data_dir("/etc")
    with pytest.raises(ValueError, match="model '/etc' refused"):
        guard.model("/etc")
    assert guard.model("embedded") == "embedded"
    assert main(["app", "--host", "127.0.0.1"]) == 0
    assert "warning" not in capsys.readouterr().err and not seen["guard"].restricted


# ------------------------------------------------------------------------------ bugs still traceback

def test_unexpected_errors_keep_their_traceback(monkeypatch):
    import refinery.commands.strategies as cmd

    def boom(args):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(cmd, "run", boom)
    with pytest.raises(RuntimeError, match="a real bug"):
        main(["strategies"])

    def env_fault(args):
        raise OSError("no filename: not a user path")

    monkeypatch.setattr(cmd, "run", env_fault)
    with pytest.raises(OSError):
        main(["strategies"])


# ------------------------------------------------------------------------------ end to end (exit codes)

def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "refinery", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, cwd=Path(__file__).resolve().parents[2])


def test_subprocess_exit_codes(ckpt, tmp_path):
    out = run_cli("decode", "hi", "--model", str(ckpt), "--device", "cuda", CUDA_VISIBLE_DEVICES="")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "CUDA is not available" in out.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = run_cli("app", "--port", str(s.getsockname()[1]))
    assert out.returncode == 2 and "Traceback" not in out.stderr and "cannot listen" in out.stderr


def test_validate_only_refuses_edit_on_a_model_without_a_delete_token(tmp_path, capsys):
    """A mask-only conversion has no delete token: the edit strategy is refused before any work starts."""
    path = save_tiny_checkpoint(tmp_path / "nodel", delete_token_id=None)
    cfg = write_yaml(tmp_path / "c.yaml", small_config(path, strategies=[{"name": "edit"}]))
    capsys.readouterr()  # save_pretrained's own progress bar
    assert main(["ablate", str(cfg), "--validate-only"]) == 2
    one_line_error(capsys, "strategies[0].name", "needs a delete token")
