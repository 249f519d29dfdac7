import argparse
import enum
from dataclasses import dataclass, field

import pytest

from leanlm.config import ConfigError, add_arguments, from_args, from_json, require, to_json
from leanlm.eval.protocol import EvalConfig


class Mode(enum.Enum):
    A = "a"
    B = "b"


@dataclass(frozen=True)
class Inner:
    x: int = 1


@dataclass(frozen=True)
class Cfg:
    mode: Mode = Mode.A
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)
    name: str | None = None
    flag: bool = False

    def __post_init__(self):
        require(all(s > 0 for s in self.sizes), "sizes must be positive")


def test_json_round_trip_preserves_types():
    cfg = Cfg(mode=Mode.B, sizes=(3, 4), inner=Inner(7), name="n", flag=True)
    back = from_json(Cfg, to_json(cfg))
    assert back == cfg and isinstance(back.sizes, tuple) and isinstance(back.mode, Mode)


def test_unknown_field_and_validation_are_errors():
    with pytest.raises(ConfigError, match="unknown field"):
        from_json(Cfg, '{"mdoe": "a"}')
    with pytest.raises(ConfigError, match="positive"):
        Cfg(sizes=(0,))
    with pytest.raises(ValueError):
        from_json(Cfg, '{"mode": "zzz"}')


def test_argparse_built_from_dataclass_keeps_defaults():
    p = argparse.ArgumentParser()
    add_arguments(p, EvalConfig)
    cfg = from_args(EvalConfig, p.parse_args(["--n", "3", "--tasks", "add:1", "sub:2", "--no-speed"]))
    assert cfg.n == 3 and cfg.tasks == ("add:1", "sub:2") and cfg.speed is False
    assert cfg.context == EvalConfig().context


def test_eval_config_rejects_bad_protocol():
    with pytest.raises(ValueError, match="unknown task family"):
        EvalConfig(tasks=("divide:2",))
    with pytest.raises(ConfigError, match="stride"):
        EvalConfig(context=128, stride=256)
