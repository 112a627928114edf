"""Bad input and bad configuration: each a clear, typed error, never a crash or hang."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsmpool import (
    ConfigError,
    InstanceNotFoundError,
    InvalidBlobError,
    InvalidTagError,
    KeyBlob,
    KeySpec,
    LoginError,
    ModuleLoadError,
    Pool,
    SignAlgorithm,
    TokenNotFoundError,
    load_config,
)
from hsmpool.instance import Instance
from tests.conftest import pool_toml


@pytest.fixture(scope="module")
def pool(token_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    cfg = tmp_path_factory.mktemp("bad") / "pool.toml"
    cfg.write_text(pool_toml(token_dir, {"a": [0, 1, 2]}))
    with Pool.open(cfg) as p:
        yield p


@pytest.fixture(scope="module")
def inst(pool: Pool) -> Instance:
    return pool.instance("a")


def test_wrong_pin(token_dir: Path, tmp_path: Path) -> None:
    bad_pin = tmp_path / "bad.pin"
    bad_pin.write_text("not-the-pin")
    text = pool_toml(token_dir, {"x": [6]}).replace(str(token_dir / "user.pin"), str(bad_pin))
    cfg = tmp_path / "p.toml"
    cfg.write_text(text)
    with pytest.raises(LoginError) as info:
        Pool.open(cfg)
    assert "not-the-pin" not in str(info.value)


def test_missing_module(token_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text(pool_toml(token_dir, {"x": [6]}).replace(
        "/usr/lib/softhsm/libsofthsm2.so", "/nonexistent/libpkcs11.so"))
    with pytest.raises(ModuleLoadError, match="does not exist"):
        Pool.open(cfg)


def test_not_a_pkcs11_module(token_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text(pool_toml(token_dir, {"x": [6]}).replace(
        "/usr/lib/softhsm/libsofthsm2.so", "/etc/hostname"))
    with pytest.raises(ModuleLoadError):
        Pool.open(cfg)


def test_unknown_token_label(token_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text(pool_toml(token_dir, {"x": [6]}).replace('"hsmpool-6"', '"no-such-token"'))
    with pytest.raises(TokenNotFoundError, match="no-such-token"):
        Pool.open(cfg)


@pytest.mark.parametrize("text, match", [
    ("[tokens.t]\nmodule='m'\nlabel='x'\npin_env='P'\n", "unknown module"),
    ("[modules.m]\npath='/x.so'\n[tokens.t]\nmodule='m'\npin_env='P'\n", "label"),
    ("[modules.m]\npath='/x.so'\n[tokens.t]\nmodule='m'\nlabel='x'\n", "pin"),
    ("[modules.m]\npath='/x.so'\n[tokens.t]\nmodule='m'\nlabel='x'\npin_env='P'\npin='1234'\n",
     "unknown key"),
    ("[modules.m]\npath='/x.so'\n[tokens.t]\nmodule='m'\nlabel='x'\npin_env='P'\n"
     "[instances.a]\ntokens=['t']\n[instances.b]\ntokens=['t']\n", "two partitions"),
    ("[modules.m]\npath='/x.so'\n[tokens.t]\nmodule='m'\nlabel='x'\npin_env='P'\n"
     "[instances.a]\ntokens=['u']\n", "unknown token"),
    ("[pool]\nsessions_per_token=0\n[modules.m]\npath='/x.so'\n", "sessions_per_token"),
    ("this is [not toml", "not valid TOML"),
    ("[surprise]\n", "unknown section"),
])
def test_config_errors(tmp_path: Path, text: str, match: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(cfg)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_pin_env_unset(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[modules.m]\npath='/usr/lib/softhsm/libsofthsm2.so'\n"
                   "[tokens.t]\nmodule='m'\nlabel='x'\npin_env='HSMPOOL_TEST_UNSET_PIN'\n")
    os.environ.pop("HSMPOOL_TEST_UNSET_PIN", None)
    with pytest.raises(ConfigError, match="HSMPOOL_TEST_UNSET_PIN"):
        load_config(cfg).tokens["t"].user_pin()


def test_unknown_instance(pool: Pool) -> None:
    with pytest.raises(InstanceNotFoundError):
        pool.instance("nope")


def test_corrupt_and_truncated_blobs(inst: Instance) -> None:
    key = inst.generate(KeySpec.AES_256)
    raw = bytes(key)
    cases = [b"", b"HPK", raw[:10], raw[:-8], raw[:-1], b"XXXX" + raw[4:], raw + b"\0"]
    for bad in cases:
        with pytest.raises(InvalidBlobError):
            inst.encrypt(bad, b"x")
    for i in range(len(raw) - len(key.wrapped), len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 0x40
        with pytest.raises(InvalidBlobError):
            inst.encrypt(bytes(flipped), b"x")


def test_spec_byte_relabelled(pool: Pool, inst: Instance) -> None:
    key = inst.generate(KeySpec.AES_256)
    as_hmac = KeyBlob.build(KeySpec.HMAC_SHA256, key.kek_id, b"", key.wrapped)
    as_ec = KeyBlob.build(KeySpec.EC_P256, key.kek_id, b"\x30\x00", key.wrapped)
    with pytest.raises(InvalidBlobError):
        inst.sign(as_ec, b"m", SignAlgorithm.ECDSA_SHA256)
    # An AES key relabelled as HMAC unwraps (both are plain secrets) but cannot encrypt.
    with pytest.raises(InvalidBlobError):
        inst.encrypt(as_hmac, b"x")
    # Forged blobs are the caller's fault: they must not eject healthy tokens.
    for _ in range(5):
        with pytest.raises(InvalidBlobError):
            inst.sign(as_ec, b"m", SignAlgorithm.ECDSA_SHA256)
    assert all(s.state == "healthy" and s.ejections == 0 for s in pool.stats().values())


def test_wrong_aad_and_short_ciphertext(inst: Instance) -> None:
    key = inst.generate(KeySpec.AES_256)
    ct = inst.encrypt(key, b"data", b"right")
    with pytest.raises(InvalidTagError):
        inst.decrypt(key, ct, b"wrong")
    with pytest.raises(InvalidTagError):
        inst.decrypt(key, ct, b"")
    with pytest.raises(InvalidTagError):
        inst.decrypt(key, ct[:27], b"right")
    with pytest.raises(InvalidTagError):
        inst.decrypt(key, b"", b"right")


def test_wrong_types_and_usages(inst: Instance) -> None:
    aes = inst.generate(KeySpec.AES_256)
    ec_key = inst.generate(KeySpec.EC_P256)
    with pytest.raises(TypeError):
        inst.encrypt(aes, "text", b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        inst.encrypt(12345, b"x")  # type: ignore[arg-type]
    with pytest.raises(InvalidBlobError):
        inst.encrypt(ec_key, b"x")
    with pytest.raises(InvalidBlobError):
        inst.sign(aes, b"m", SignAlgorithm.ECDSA_SHA256)
    with pytest.raises(InvalidBlobError):
        inst.sign(ec_key, b"m", SignAlgorithm.RSA_PSS_SHA256)
    with pytest.raises(InvalidBlobError):
        inst.hmac(aes, b"m")
    with pytest.raises(ValueError):
        inst.generate_secret(0)
