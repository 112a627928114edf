"""``[pool] require_all_tokens``: the library is strict unless told otherwise; with it false a
token that is missing or refuses its PIN is left out (``Pool.missing``), and the pool serves
on the others. Real SoftHSM2 tokens (instance "degr" on tokens 6, 7)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hsmpool import KeySpec, LoginError, Pool, PoolUnavailableError, TokenNotFoundError
from hsmpool.config import degraded_default, load_config
from tests.conftest import pool_toml


def _config(tmp: Path, token_dir: Path, instances: dict[str, list[int]],
            require_all: str | None = None) -> Path:
    text = pool_toml(token_dir, instances)
    if require_all is not None:
        text = text.replace("[pool]", f"[pool]\nrequire_all_tokens = {require_all}", 1)
    path = tmp / f"pool-{len(list(tmp.glob('pool-*')))}.toml"
    path.write_text(text)
    return path


def _with_absent_token(path: Path, token_dir: Path, label: str = "absent-7",
                       pin_file: str | None = None) -> None:
    text = path.read_text().replace('tokens = ["t6", "t7"]', 'tokens = ["t6", "t7", "tz"]')
    text = text.replace("[instances.", '[tokens.tz]\nmodule = "softhsm"\n'
                        f'label = "{label}"\npin_file = "{pin_file or token_dir / "user.pin"}"'
                        "\n[instances.", 1)
    path.write_text(text)


def test_strict_by_default_degraded_when_asked(token_dir: Path, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    cfg = _config(tmp_path, token_dir, {"degr": [6, 7]})
    with Pool.open(cfg) as pool:  # the instance's domain keys on both tokens
        blob = pool.instance("degr").generate(KeySpec.AES_256)
    _with_absent_token(cfg, token_dir)
    with pytest.raises(TokenNotFoundError, match="absent-7"):
        Pool.open(cfg)
    with caplog.at_level(logging.WARNING, logger="hsmpool.pool"), \
            Pool(degraded_default(load_config(cfg))) as pool:
        assert set(pool.missing) == {"tz"} and "absent-7" in pool.missing["tz"]
        inst = pool.instance("degr")
        assert [m.name for m in inst.members] == ["t6", "t7"]
        assert inst.decrypt(blob, inst.encrypt(blob, b"x", b"a"), b"a") == b"x"
    assert "token 'tz' left out of the pool" in caplog.text
    cfg.write_text(cfg.read_text().replace("[pool]", "[pool]\nrequire_all_tokens = true", 1))
    with pytest.raises(TokenNotFoundError):
        Pool(degraded_default(load_config(cfg)))  # set in the file: strict


def test_a_wrong_pin_leaves_the_token_out(token_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, token_dir, {"degr": [6, 7]}, "false")
    Pool.open(cfg).close()
    bad_pin = tmp_path / "bad.pin"
    bad_pin.write_text("not-the-pin")
    text = cfg.read_text()
    cfg.write_text(text.replace(f'pin_file = "{token_dir / "user.pin"}"',
                                f'pin_file = "{bad_pin}"', 1))  # t6's PIN
    with Pool.open(cfg) as pool:
        assert set(pool.missing) == {"t6"} and "refused the PIN" in pool.missing["t6"]
    cfg.write_text(cfg.read_text().replace("require_all_tokens = false",
                                           "require_all_tokens = true"))
    with pytest.raises(LoginError):
        Pool.open(cfg)


def test_no_token_left_is_still_an_error(token_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, token_dir, {"degrnew": [6]}, "false")
    text = cfg.read_text().replace('label = "hsmpool-6"', 'label = "absent-6"')
    cfg.write_text(text)
    with pytest.raises(PoolUnavailableError, match="no configured token could be opened"):
        Pool.open(cfg)
    cfg = _config(tmp_path, token_dir, {"degrnew": [6], "degrok": [7]}, "false")
    cfg.write_text(cfg.read_text().replace('label = "hsmpool-6"', 'label = "absent-6"'))
    with pytest.raises(PoolUnavailableError, match="instance 'degrnew': no token of its "
                                                   "partition could be opened"):
        Pool.open(cfg)
