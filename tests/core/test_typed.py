"""core.typed: the one YAML -> frozen dataclass path (coercion, ranges, choices, nesting, error texts)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import pytest

from refinery.core.errors import ConfigError, UsageError
from refinery.core.typed import (DTYPE_NAMES, build, check_fields, check_value, coerce, describe_range, field_choices,
                                 ranged)


@dataclass(frozen=True)
class Inner:
    k: int = ranged(2, 1)  # >= 1
    p: float = ranged(0.5, 0, 1, open="lo")  # (0, 1]


@dataclass(frozen=True)
class Outer:
    name: str  # required
    eta: float = ranged(0.04, 0, 1)
    frac: float = ranged(0.25, 0, 1, open="hi")  # [0, 1)
    steps: Optional[int] = ranged(None, 0)
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    device: str = field(default="cpu", metadata={"choices": ("cpu", "cuda")})
    cache: str = field(default="none", metadata={"choices": ("none", "dual"), "noun": "cache mode"})
    ks: tuple[int, ...] = field(default=(2, 4), metadata={"range": (1, None), "min_len": 1})
    pair: tuple[int, int] = (1, 2)
    loose: tuple = ()
    opts: dict = field(default_factory=dict)
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    upper: Optional[str] = field(default=None, metadata={"parse": lambda v, key, src: str(v).upper()})
    source: str = field(default="<dict>", metadata={"internal": True})


def _err(data: dict, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build(Outer, {"name": "x", **data}, "f.yaml", **kw)
    return info.value


def test_coercion_rules():
    cfg = build(Outer, {"name": Path("runs/a"), "eta": 1, "steps": 3, "flag": True, "ks": [1, 8], "pair": [3, 4],
                        "loose": [1, "a"], "opts": {"x": 1}, "kwargs": {"d": 2}, "inner": {"k": 5}, "upper": "ab"},
                "f.yaml", source="f.yaml")
    assert cfg.name == "runs/a" and isinstance(cfg.name, str)  # a path from code becomes its text
    assert cfg.eta == 1.0 and isinstance(cfg.eta, float)  # floats accept ints, stored as float
    assert cfg.steps == 3 and cfg.flag is True and cfg.ks == (1, 8) and cfg.pair == (3, 4)
    assert cfg.loose == (1, "a") and cfg.opts == {"x": 1} and cfg.kwargs == {"d": 2}
    assert cfg.inner == Inner(k=5) and cfg.upper == "AB" and cfg.source == "f.yaml"
    assert build(Outer, {"name": "x", "steps": None}, "f.yaml").steps is None  # Optional takes null


@pytest.mark.parametrize("data, key, reason", [
    ({"eta": "hot"}, "eta", "expected a number, got 'hot'"),
    ({"eta": True}, "eta", "expected a number, got True"),  # a bool is not a number
    ({"steps": 1.5}, "steps", "expected an integer, got 1.5"),
    ({"steps": True}, "steps", "expected an integer, got True"),
    ({"flag": "yes"}, "flag", "expected true or false, got 'yes'"),
    ({"name": 3}, "name", "expected text, got 3"),
    ({"mode": "c"}, "mode", "'c' is not one of ['a', 'b']"),
    ({"ks": 3}, "ks", "expected a list, got 3"),
    ({"ks": [1, 2.5]}, "ks[1]", "expected an integer, got 2.5"),
    ({"pair": [1, 2, 3]}, "pair", "expected 2 items, got [1, 2, 3]"),
    ({"opts": [1]}, "opts", "expected a mapping, got [1]"),
    ({"inner": 3}, "inner", "expected a mapping, got int"),
    ({"inner": {"k": "x"}}, "inner.k", "expected an integer, got 'x'"),
])
def test_type_mistakes_name_file_key_and_reason(data, key, reason):
    err = _err(data)
    assert (err.source, err.key, err.reason) == ("f.yaml", key, reason)
    assert str(err) == f"f.yaml: {key}: {reason}"


@pytest.mark.parametrize("data, key, reason", [
    ({"eta": 1.5}, "eta", "must lie in [0, 1], got 1.5"),
    ({"eta": -0.1}, "eta", "must lie in [0, 1], got -0.1"),
    ({"frac": 1.0}, "frac", "must lie in [0, 1), got 1.0"),
    ({"steps": -1}, "steps", "must be >= 0, got -1"),
    ({"inner": {"p": 0}}, "inner.p", "must lie in (0, 1], got 0.0"),
    ({"inner": {"k": 0}}, "inner.k", "must be >= 1, got 0"),
    ({"ks": [0, 2]}, "ks", "every item must be >= 1, got [0, 2]"),
    ({"ks": []}, "ks", "expected a non-empty list, got []"),
    ({"device": "tpu"}, "device", "'tpu' is not one of ['cpu', 'cuda']"),
    ({"cache": "full"}, "cache", "'full' is not a cache mode; choose one of ['none', 'dual']"),
])
def test_ranges_and_choices_come_from_field_metadata(data, key, reason):
    err = _err(data)
    assert (err.key, err.reason) == (key, reason), str(err)


def test_range_ends_are_inclusive_unless_declared_open():
    ok = build(Outer, {"name": "x", "eta": 0, "frac": 0, "inner": {"p": 1, "k": 1}}, "f.yaml")
    assert (ok.eta, ok.frac, ok.inner.p, ok.inner.k) == (0.0, 0.0, 1.0, 1)
    assert build(Outer, {"name": "x", "eta": 1}, "f.yaml").eta == 1.0
    assert describe_range((0, 1), "both") == "lie in (0, 1)" and describe_range((None, 5), "hi") == "be < 5"


def test_unknown_keys_suggest_close_names_and_missing_keys_are_named():
    err = _err({"etta": 0.1}, at="strategies[0].params")
    assert err.key == "strategies[0].params.etta"
    assert err.reason.startswith("unknown key. Did you mean 'eta'? Known keys: [")
    assert "'source'" not in err.reason  # internal fields are not keys of the file
    err = _err({"inner": {"kk": 1}})
    assert err.key == "inner.kk" and "Did you mean 'k'?" in err.reason
    with pytest.raises(ConfigError) as info:
        build(Outer, {"source": "x"}, "f.yaml")  # internal fields cannot be set from the file
    assert info.value.key == "source" and "unknown key" in info.value.reason
    with pytest.raises(ConfigError, match=r"^f\.yaml: name: required parameter is missing$"):
        build(Outer, {}, "f.yaml", noun="parameter")
    with pytest.raises(ConfigError, match=r"^f\.yaml: expected a mapping, got list$"):
        build(Outer, [], "f.yaml")


def test_errors_are_usage_errors_that_survive_pickling():
    err = _err({"eta": 2})
    assert isinstance(err, UsageError) and isinstance(err, ValueError)  # the CLIs' one line + exit 2
    again = pickle.loads(pickle.dumps(err))
    assert (again.source, again.key, again.reason, str(again)) == (err.source, err.key, err.reason, str(err))


def test_check_fields_catches_objects_built_without_build():
    bad = Outer(name="x", inner=Inner(k=0))  # direct construction skips build()
    with pytest.raises(ConfigError, match=r"^Outer: inner\.k: must be >= 1, got 0$"):
        check_fields(bad, "Outer")
    check_fields(Outer(name="x"), "Outer")  # the defaults obey their own ranges


def test_helpers_for_forms_and_dtypes():
    fields = {f.name: f for f in Outer.__dataclass_fields__.values()}
    assert field_choices(fields["mode"], Literal["a", "b"]) == ("a", "b")
    assert field_choices(fields["device"], str) == ("cpu", "cuda")
    assert field_choices(fields["eta"], float) is None
    assert check_value(None, {"range": (0, 1)}) is None and check_value(2, {"range": (0, 1)}) is not None
    assert coerce([1, 2], tuple[int, ...], "w", "k") == (1, 2)
    assert DTYPE_NAMES["bf16"] == DTYPE_NAMES["bfloat16"] == "bfloat16" and DTYPE_NAMES["auto"] is None


def test_one_dtype_table_for_configs_and_loading():
    import torch

    from refinery.core.checkpoint import parse_dtype
    from refinery.experiments.config import DTYPES

    assert set(DTYPES) == set(DTYPE_NAMES)  # the ablation config accepts exactly what loading understands
    assert [parse_dtype(n) for n in ("fp32", "bf16", "float16", "auto", None)] == \
        [torch.float32, torch.bfloat16, torch.float16, None, None]
    with pytest.raises(ValueError, match="dtype 'fp8' unknown"):
        parse_dtype("fp8")
