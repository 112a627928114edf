"""In-process fuzzing (hypothesis, bounded, no example database) of every parser of untrusted
bytes: each gives a result or its module's typed error, never another exception.

* ciphertexts: :func:`kms.ciphertext.parse` and the encryption context's canonical form, the
  encrypted-file header (:mod:`kms.fileenc`), imported key material
  (:mod:`kms.keys.importing`), grant tokens;
* the audit trail as ``hsmpool audit verify`` and ``audit tail|show`` read it: a real segment
  written by :class:`kms.audit.AuditLog`, then its rows, head and meta edited, or its file's
  bytes damaged (:class:`kms.audit.VerifyReport` / :class:`kms.audit.AuditError`);
* the configuration file (:func:`kms.config.load`): random TOML text and bytes, and random
  values for every known key of a valid file (:class:`hsmpool.errors.ConfigError`);
* SigV4's Authorization header and the whole check (:mod:`kms.api.sigv4`), ACS3 and v1
  signatures (:mod:`kms.api.acs_sign`), the Alibaba query and parameter parsing
  (:mod:`kms.api.alibaba`), the KMS-instance Date header (:mod:`kms.api.kms_instance_auth`)
  (:class:`~kms.api.sigv4.AuthError`, :class:`~kms.errors.KmsError`, ``Refused``);
* protobuf (:mod:`kms.api.protowire`) against every KMS-instance request message, messages
  made valid and then damaged (tests/kms/test_protowire.py has the random-bytes case).

Wire text is what the HTTP parser gives the front ends: latin-1 strings.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hsmpool.errors import ConfigError
from kms import ciphertext as ctf
from kms import errors as E
from kms import fileenc
from kms.api import alibaba as ali
from kms.api import protowire as pw
from kms.api.acs_sign import AcsVerifier
from kms.api.kms_instance import APIS
from kms.api.kms_instance_auth import ClientKeyVerifier, Refused, string_to_sign
from kms.api.sigv4 import AuthError, Verifier, amz_date_to_epoch, parse_authorization
from kms.audit import AuditError, AuditEvent, AuditLog, VerifyReport, verify
from kms.audit_reader import Reader, parse_time
from kms.config import load as load_config
from kms.keys import grants, importing
from kms.model import KeySpec

FUZZ = settings(deadline=None, database=None, derandomize=False, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
LATIN = st.text(st.characters(max_codepoint=255, blacklist_characters="\r\n"), max_size=80)
# Any code point, lone surrogates included (st.text leaves them out, or nearly: JSON's
# \ud800 escapes decode to them).
ANY_TEXT = st.one_of(st.text(max_size=60), st.lists(st.one_of(
    st.characters(exclude_categories=[]),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=[])),
    max_size=12).map("".join))
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**80, 2**80), st.floats(),
              ANY_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(ANY_TEXT, inner, max_size=4)), max_leaves=10)


# --- ciphertexts ---------------------------------------------------------------------------

def _blob(version: bytes, alg: int, body: bytes) -> bytes:
    return bytes((ctf.FORMAT_V1,)) + version + bytes((alg,)) + body


@settings(FUZZ, max_examples=300)
@given(data=st.one_of(st.binary(max_size=120),
                      st.builds(_blob, st.binary(min_size=16, max_size=16),
                                st.integers(0, 255), st.binary(max_size=80))))
def test_ciphertext_blobs_parse_or_are_invalid(data: bytes) -> None:
    try:
        parsed = ctf.parse(data)
    except E.InvalidCiphertext:
        return
    assert parsed.header == data[:ctf.HEADER_LEN] and len(parsed.version_id) == 32
    assert parsed.algorithm in ctf.ALGORITHMS and len(data) >= ctf.MIN_LEN


@settings(FUZZ, max_examples=200)
@given(context=st.one_of(st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=5),
                         st.dictionaries(st.text(max_size=300), st.text(max_size=3000),
                                         max_size=4),
                         JSONISH))
@example(context={"\ud800": ""})  # a lone surrogate: once a UnicodeEncodeError
@example(context={"k": "\udc00x"})
def test_encryption_contexts_are_canonical_or_invalid(context: Any) -> None:
    try:
        raw = ctf.canonical_context(context)
    except E.Validation:
        return
    assert isinstance(raw, bytes)
    if context:  # and the file header's reader gives it back
        assert fileenc.parse_context(raw) == context


@settings(FUZZ, max_examples=200)
@given(raw=st.binary(max_size=200))
def test_file_header_contexts_parse_or_are_invalid(raw: bytes) -> None:
    try:
        out = fileenc.parse_context(raw)
    except E.InvalidCiphertext:
        return
    assert ctf.canonical_context(out) == raw


def _header() -> bytes:
    return fileenc.build_header(1, 1 << 16, b"\x01" * 94, {"a": "b"},
                                b"\x02" * fileenc.PREFIX_LEN)


@settings(FUZZ, max_examples=300)
@given(data=st.one_of(st.binary(max_size=200), st.tuples(
    st.integers(0, 200), st.binary(max_size=8), st.integers(0, 200)).map(
        lambda t: _header()[:t[0]] + t[1] + _header()[t[0] + t[2] % 9:])))
def test_encrypted_file_headers_parse_or_are_invalid(data: bytes) -> None:
    try:
        h = fileenc.read_header(io.BytesIO(data))
    except E.InvalidCiphertext:
        return
    assert h.raw == data[:len(h.raw)] and isinstance(h.context, dict)


IMPORTABLE = [KeySpec.ECC_NIST_P256, KeySpec.RSA_2048, KeySpec.SM2, KeySpec.SYMMETRIC_DEFAULT,
              KeySpec.HMAC_256]


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    return bytes((tag,)) + (bytes((n,)) if n < 128 else b"\x82" + n.to_bytes(2, "big")) + body


@settings(FUZZ, max_examples=300)
@given(spec=st.sampled_from(IMPORTABLE), material=st.one_of(
    st.binary(max_size=130),
    st.binary(max_size=40).map(lambda b: _der(0x30, _der(0x02, b"\x00") + b)),
    st.binary(max_size=4).map(lambda b: b"\x30" + b),
    st.sampled_from([b"\x30\x82\x00\x00", b"\x30\x81\x00", b"\x30\x02\x02\x00",
                     b"\x30\x83\xff\xff\xff", b"\x30\x00"])))
@example(spec=KeySpec.ECC_NIST_P256, material=b"\x30\x82\x00\x00")  # once an IndexError
@example(spec=KeySpec.SM2, material=b"\x30\x81\x00")
def test_imported_key_material_is_a_key_or_incorrect(spec: KeySpec, material: bytes) -> None:
    try:
        importing._check_material(spec, material)
    except (E.IncorrectKeyMaterial, E.UnsupportedOperation):
        pass


@settings(FUZZ, max_examples=150)
@given(tokens=st.one_of(JSONISH, st.lists(ANY_TEXT, max_size=12)))
def test_grant_tokens_parse_or_are_refused(tokens: Any) -> None:
    try:
        out = grants.parse_tokens(tokens)
    except (E.Validation, E.InvalidGrantToken):
        return
    assert all(isinstance(g, str) and isinstance(t, str) for g, t in out)


# --- the audit trail ------------------------------------------------------------------------

HEAD_KEY = b"k" * 32


@pytest.fixture(scope="module")
def segment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audit directory with one real segment of 12 records (head MACed)."""
    d = tmp_path_factory.mktemp("audit-src")
    log = AuditLog(d, "fz", head_key=HEAD_KEY)
    for i in range(12):
        log.append(AuditEvent(1.7e9 + i, "inst", "alice", "kms:Encrypt", f"key-{i}", None,
                              "ok", f"req-{i}", {"ctx:a": "b"}))
    log.close()
    assert verify(d, head_key=HEAD_KEY).ok
    return d


@pytest.fixture
def trail(segment: Path, tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "audit"
    shutil.copytree(segment, d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _reads(d: Path) -> None:
    """What ``audit verify`` and ``audit tail``/``show`` do: a report, records or an
    AuditError, nothing else."""
    assert isinstance(verify(d, head_key=HEAD_KEY), VerifyReport)
    assert isinstance(verify(d), VerifyReport)
    try:
        r = Reader(d)
        for rec in r.read():
            rec.to_json()
        r.tail(5)
        r.heads()
    except AuditError:
        pass


RECORD_TEXT = st.one_of(
    st.text(max_size=80),
    JSONISH.map(json.dumps),
    st.tuples(st.integers(-2**70, 10**400), ANY_TEXT).map(
        lambda t: f'[2,{t[0]},"i","p","a",null,null,"ok","r",{{}}]'),
    st.floats().map(lambda f: f'[2,{f!r},"i","p","a",null,null,"ok","r",{{}}]'),
    st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '[2,1.0,"i","p","a",null,null,"ok","r",'
                             + '{"a":' * n + "1" + "}" * n + "]"),
    st.sampled_from(['[2,1.0,"i","p","a",null,null,"ok","r",{"a":1}]',
                     '[2,1.0,"i","p","a",5,null,"ok","r",{}]', "[2]", "[3,1]", "null",
                     '[2,NaN,"i","p","a",null,null,"ok","r",{}]',
                     '[true,1.0,"i","p","a",null,null,"ok","r",{}]']))
SQL_VALUE = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
                      st.text(max_size=40), st.binary(max_size=40))


@st.composite
def _edits(draw: st.DrawFn) -> list[tuple[str, tuple[Any, ...]]]:
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["record", "record", "hash", "prev", "delete", "renumber",
                                     "head", "head-delete", "meta", "insert"]))
        seq = draw(st.integers(1, 13))
        if kind == "record":
            edits.append(("UPDATE records SET record = ? WHERE seq = ?",
                          (draw(st.one_of(RECORD_TEXT, SQL_VALUE)), seq)))
        elif kind in ("hash", "prev"):
            col = "hash" if kind == "hash" else "prev_hash"
            edits.append((f"UPDATE records SET {col} = ? WHERE seq = ?",
                          (draw(SQL_VALUE), seq)))
        elif kind == "delete":
            edits.append(("DELETE FROM records WHERE seq = ?", (seq,)))
        elif kind == "renumber":
            edits.append(("UPDATE OR IGNORE records SET seq = ? WHERE seq = ?",
                          (draw(st.integers(-2**63, 2**63 - 1)), seq)))
        elif kind == "insert":
            edits.append(("INSERT OR REPLACE INTO records (seq, record, prev_hash, hash) "
                          "VALUES (?, ?, ?, ?)", (draw(st.integers(-5, 2**63 - 1)),
                                                  draw(RECORD_TEXT), draw(SQL_VALUE),
                                                  draw(SQL_VALUE))))
        elif kind == "head":
            col = draw(st.sampled_from(["seq", "hash", "mac"]))
            edits.append((f"UPDATE head SET {col} = ?", (draw(SQL_VALUE),)))
        elif kind == "head-delete":
            edits.append(("DELETE FROM head", ()))
        else:
            edits.append(("UPDATE meta SET value = ? WHERE name = ?",
                          (draw(SQL_VALUE), draw(st.sampled_from(["format", "segment"])))))
    return edits


_SET = "UPDATE records SET record = ? WHERE seq = ?"


@settings(FUZZ, max_examples=120)
@given(edits=_edits())
# Found by this test: a time past any float (OverflowError), nesting past json's limit
# (RecursionError), a negative head seq with a head key (OverflowError in the MAC).
@example(edits=[(_SET, ('[2,1' + "0" * 400 + ',"i","p","a",null,null,"ok","r",{}]', 3))])
@example(edits=[(_SET, ("[" * 3000 + "]" * 3000, 2))])
@example(edits=[("UPDATE head SET seq = ?", (-1,))])
@example(edits=[("UPDATE head SET seq = ?", (2**63 - 1,))])
def test_audit_verify_reads_edited_segments(trail: Path, edits: list[tuple[str, tuple[Any,
                                                                                      ...]]]
                                            ) -> None:
    db = sqlite3.connect(trail / "audit-fz.db")
    try:
        before = db.execute("SELECT * FROM records ORDER BY seq").fetchall() + \
            db.execute("SELECT * FROM head").fetchall() + \
            db.execute("SELECT * FROM meta ORDER BY name").fetchall()
        for sql, args in edits:
            try:
                db.execute(sql, args)
            except sqlite3.IntegrityError:  # NOT NULL: SQLite refuses that edit itself
                pass
        db.commit()
        after = db.execute("SELECT * FROM records ORDER BY seq").fetchall() + \
            db.execute("SELECT * FROM head").fetchall() + \
            db.execute("SELECT * FROM meta ORDER BY name").fetchall()
    finally:
        db.close()
    _reads(trail)
    if after != before:  # any edit is seen
        assert not verify(trail, head_key=HEAD_KEY).ok


@settings(FUZZ, max_examples=60)
@given(cuts=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1,
                     max_size=6), truncate=st.one_of(st.none(), st.integers(0, 1 << 16)))
def test_audit_verify_reads_damaged_files(trail: Path, cuts: list[tuple[int, int]],
                                          truncate: int | None) -> None:
    for path in sorted(trail.glob("audit-fz.db*")):  # the database, and its WAL if any
        data = bytearray(path.read_bytes())
        if not data:
            continue
        for pos, value in cuts:
            data[pos % len(data)] = value
        if truncate is not None:
            del data[truncate % len(data):]
        path.write_bytes(bytes(data))
    _reads(trail)


@settings(FUZZ, max_examples=80)
@given(text=LATIN)
def test_audit_time_arguments_parse_or_are_refused(text: str) -> None:
    try:
        t = parse_time(text, now=lambda: 1.7e9)
    except ValueError:
        return
    assert isinstance(t, float | int)


# --- the configuration file -----------------------------------------------------------------

def _toml(v: Any) -> str:
    """A TOML value (strings as JSON-escaped basic strings; lone surrogates make invalid
    TOML, which is a case too)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else
                                            "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(x)}" for k, x in v.items()) + "}"


TOML_VALUE = st.recursive(
    st.one_of(st.booleans(), st.integers(-2**70, 10**400), st.floats(), st.text(max_size=30),
              st.sampled_from(["", "/", "~", "postgresql://x", ":memory:", "-1", "127.0.0.1/8",
                               "::1/128", "1.2.3.4/33", "a/b", "json", "trace", "text"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=10), inner, max_size=3)),
    max_leaves=6)
KNOWN = {
    "pool": ["sessions_per_token", "lease_timeout", "key_cache_size", "failure_threshold",
             "slow_call_ms", "hang_ms", "probe_interval", "probe_max_interval",
             "operation_timeout", "executor_spin_us", "require_all_tokens"],
    "modules.softhsm": ["path", "env"],
    "tokens.t0": ["module", "label", "serial", "pin_env", "pin_file", "so_pin_env",
                  "so_pin_file", "weight"],
    "instances.default": ["tokens"],
    "kms": ["database", "audit_dir", "region", "max_plaintext", "import_token_ttl",
            "store_grace", "secret_context_keys", "accounts"],
    "server": ["host", "port", "workers", "tls_cert", "tls_key", "log_level", "access_log",
               "state_dir", "seed", "request_timeout", "rate_limit", "rate_burst",
               "max_blocking_per_principal", "trusted_proxies", "console_admins",
               "console_session_hours", "kms_instance_port", "kms_instance_tls_dir",
               "ops_networks", "ops_host", "ops_port"],
}
BASE: dict[str, dict[str, Any]] = {
    "pool": {"sessions_per_token": 4}, "modules.softhsm": {"path": "/usr/lib/x.so"},
    "tokens.t0": {"module": "softhsm", "label": "t", "pin_env": "X_PIN"},
    "instances.default": {"tokens": ["t0"]}, "kms": {"region": "us-east-1"},
    "server": {"port": 8080}}


def _config_text(doc: dict[str, dict[str, Any]]) -> str:
    return "".join(f"[{table}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())
                   for table, keys in doc.items())


def test_the_base_configuration_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(_config_text(BASE))
    pool, kms = load_config(path)
    assert list(pool.tokens) == ["t0"] and kms.region == "us-east-1"


@settings(FUZZ, max_examples=300)
@given(table=st.sampled_from(sorted(KNOWN)), data=st.data())
def test_config_values_load_or_are_config_errors(tmp_path: Path, table: str,
                                                 data: st.DataObject) -> None:
    doc = {t: dict(v) for t, v in BASE.items()}
    for _ in range(data.draw(st.integers(1, 2))):
        doc[table][data.draw(st.sampled_from(KNOWN[table]))] = data.draw(TOML_VALUE)
    path = tmp_path / "c.toml"
    path.write_text(_config_text(doc), errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError:
        pass


@settings(FUZZ, max_examples=200)
@given(raw=st.one_of(
    st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8",
                                                                           "surrogatepass")),
    st.integers(1, 5000).map(lambda n: b"a = " + b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b"a = " + b"{b = " * n + b"1" + b"}" * n),
    st.binary(max_size=30).map(lambda b: _config_text(BASE).encode() + b)))
@example(raw=b"a = " + b"[" * 5000 + b"]" * 5000)  # once a RecursionError
@example(raw=b"\xff\xfe = 1")  # once a UnicodeDecodeError
def test_config_files_load_or_are_config_errors(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(raw)
    try:
        load_config(path)
    except ConfigError:
        pass


@pytest.mark.parametrize("key, value", [("store_grace", 10**400),
                                        ("import_token_ttl", 10**400),
                                        ("import_token_ttl", math.nan),
                                        ("import_token_ttl", -1)],
                         ids=["grace-10e400", "ttl-10e400", "ttl-nan", "ttl-negative"])
def test_config_numbers_past_a_float_are_config_errors(tmp_path: Path, key: str,
                                                       value: Any) -> None:
    """Found by this file: a TOML integer too large for a float was an OverflowError."""
    doc = {t: dict(v) for t, v in BASE.items()}
    doc["kms"][key] = value
    path = tmp_path / "c.toml"
    path.write_text(_config_text(doc))
    with pytest.raises(ConfigError, match=key):
        load_config(path)


def test_a_config_path_that_is_not_a_readable_file_is_a_config_error(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "missing.toml"):
        with pytest.raises(ConfigError):
            load_config(path)


# --- signatures and the front ends' parsing --------------------------------------------------

AK, SECRET = "AKIDEXAMPLE0000000001", "s3cr3t"
AUTH = st.one_of(
    LATIN, ANY_TEXT,
    st.builds(lambda cred, signed, sig: f"AWS4-HMAC-SHA256 Credential={cred}, "
              f"SignedHeaders={signed}, Signature={sig}",
              st.one_of(LATIN, st.just(f"{AK}/20260101/us-east-1/kms/aws4_request")),
              st.one_of(LATIN, st.just("host;x-amz-date")),
              st.one_of(st.text("0123456789abcdef", min_size=64, max_size=64), LATIN)))


@settings(FUZZ, max_examples=300)
@given(value=st.one_of(st.none(), AUTH))
def test_sigv4_authorization_headers_parse_or_are_refused(value: str | None) -> None:
    for _ in range(2):  # the second parse goes through the cache of parsed prefixes
        try:
            auth = parse_authorization(value)
        except AuthError as exc:
            assert exc.code in ("MissingAuthenticationTokenException",
                                "IncompleteSignatureException")
            continue
        assert len(auth.signature) == 64 and "host" in auth.signed_headers


WIRE_HEADERS = st.dictionaries(
    st.sampled_from(["authorization", "x-amz-date", "host", "content-type", "x-amz-target",
                     "x-amz-security-token", "x-acs-date", "x-acs-signature-nonce",
                     "x-acs-content-sha256", "x-acs-action", "date", "content-sha256",
                     "x-kms-apiname", "x-kms-acccesskeyid"]) | LATIN.map(str.lower),
    LATIN, max_size=8)


@settings(FUZZ, max_examples=300)
@given(method=st.sampled_from(["POST", "GET", "P\u00d6ST"]), path=LATIN, query=LATIN,
       headers=WIRE_HEADERS, auth=AUTH, date=st.one_of(LATIN, st.just("20260101T000000Z")),
       body=st.binary(max_size=40))
def test_sigv4_verification_gives_a_credential_or_an_auth_error(
        method: str, path: str, query: str, headers: dict[str, str], auth: str, date: str,
        body: bytes) -> None:
    v = Verifier(lambda ak: SECRET if ak == AK else None, ["us-east-1"],
                 now=lambda: 1767225600.0)
    headers = {**headers, "authorization": auth, "x-amz-date": date}
    try:
        v.verify(method, path, query, headers, body)
    except AuthError:
        pass
    try:
        amz_date_to_epoch(date)
    except AuthError:
        pass


ACS_AUTH = st.one_of(LATIN, st.builds(
    lambda cred, signed, sig: f"ACS3-HMAC-SHA256 Credential={cred},SignedHeaders={signed},"
    f"Signature={sig}", st.one_of(LATIN, st.just(AK)),
    st.one_of(LATIN, st.just("x-acs-content-sha256;x-acs-date;x-acs-signature-nonce")),
    LATIN))


@settings(FUZZ, max_examples=300)
@given(method=st.sampled_from(["POST", "GET"]), path=LATIN,
       params=st.dictionaries(LATIN, st.text(st.characters(blacklist_categories=["Cs"]),
                                             max_size=40), max_size=5),
       headers=WIRE_HEADERS, auth=ACS_AUTH, body=st.binary(max_size=40))
def test_acs_signatures_give_an_access_key_or_an_auth_error(
        method: str, path: str, params: dict[str, str], headers: dict[str, str], auth: str,
        body: bytes) -> None:
    v = AcsVerifier(lambda ak: SECRET if ak == AK else None, now=lambda: 1767225600.0)
    try:
        v.verify_acs3(method, path, params, {**headers, "authorization": auth}, body)
    except AuthError:
        pass
    v1 = {**params, "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0",
          "AccessKeyId": AK, **({"Signature": params["Signature"]} if "Signature" in params
                                else {})}
    for p in (params, v1):
        try:
            v.verify_v1(method, p)
        except AuthError:
            pass


PARAM_VALUE = st.one_of(
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=60),
    st.sampled_from(["", "1", "-1", "9" * 30, "1_0", "\u0661", "true", "[]", "{}", "null",
                     '{"a": "b"}', '{"\\ud800": "x"}', "[" * 2000 + "]" * 2000,
                     '[{"TagKey": "k", "TagValue": "v"}]', "YWJj", "YQ==YQ==",
                     "acs:kms:us-east-1:1:key/k", "acs:kms:", '["ACSCurrent", 1]']))


@settings(FUZZ, max_examples=300)
@given(query=LATIN, params=st.dictionaries(st.sampled_from(
    ["KeyId", "EncryptionContext", "Tags", "TagKeys", "VersionStages", "PageNumber",
     "PageSize", "Plaintext", "NumberOfBytes", "DestinationKeyId"]), PARAM_VALUE, max_size=6))
def test_alibaba_parameters_parse_or_are_invalid(query: str, params: dict[str, str]) -> None:
    parsed = ali.parse_query(query)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())
    for fn in (lambda p: ali._int(p, "PageNumber", 1), lambda p: ali._b64(p, "Plaintext"),
               ali._ctx, lambda p: ali._json_list(p, "Tags"),
               lambda p: ali._json_list(p, "TagKeys"), ali._key_id, ali._page,
               lambda p: ali._stage_list(p.get("VersionStages"))):
        for p in (params, parsed):
            try:
                fn(p)
            except E.KmsError:
                pass
    ctx = None
    try:
        ctx = ali._ctx(params)
    except E.KmsError:
        pass
    if ctx:  # what the front end accepts as a context, the ciphertext format takes
        ctf.canonical_context(ctx)


@settings(FUZZ, max_examples=200)
@given(date=st.one_of(LATIN, st.sampled_from(
    ["Mon, 01 Jan 2001 00:00:00 GMT", "Tue, 31 Feb 2026 25:61:61 GMT",
     "Mon, 01 Jan 99999 00:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 +9999",
     "Fri, 31 Dec 9999 23:59:59 -2359", "Mon, 01 Jan 0001 00:00:00 +2359"])),
    headers=WIRE_HEADERS)
def test_kms_instance_dates_parse_or_are_refused(date: str, headers: dict[str, str]) -> None:
    verifier = ClientKeyVerifier(None, None)  # type: ignore[arg-type]  # (the Date only)
    try:
        assert isinstance(verifier._date(date), float)
    except Refused as exc:
        assert exc.code == "InvalidParam"
    assert string_to_sign("POST", headers).endswith(b"/")


# --- protobuf ---------------------------------------------------------------------------------

SCHEMAS = sorted(APIS)


@st.composite
def _damaged_message(draw: st.DrawFn) -> tuple[str, bytes]:
    api = draw(st.sampled_from(SCHEMAS))
    schema = APIS[api][0]
    fields: dict[str, Any] = {}
    for name, kind in schema.values():
        if draw(st.booleans()):
            fields[name] = draw({"string": st.text(max_size=10), "bytes": st.binary(max_size=10),
                                 "int32": st.integers(-2**31, 2**31 - 1),
                                 "bool": st.booleans(),
                                 "repeated string": st.lists(st.text(max_size=5),
                                                             max_size=3)}[kind])
    raw = bytearray(pw.encode(fields, schema))
    assert pw.decode(bytes(raw), schema).keys() <= set(fields)
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["flip", "cut", "insert", "tag"]))
        pos = draw(st.integers(0, max(0, len(raw))))
        if how == "flip" and raw:
            raw[pos % len(raw)] ^= 1 << draw(st.integers(0, 7))
        elif how == "cut":
            del raw[pos:]
        elif how == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        else:
            number = draw(st.sampled_from(sorted(schema) + [0, 99, 2**28]))
            wire = draw(st.integers(0, 7))
            tag = number << 3 | wire
            out = bytearray()
            while tag > 0x7F:
                out.append((tag & 0x7F) | 0x80)
                tag >>= 7
            out.append(tag)
            raw[pos:pos] = out + draw(st.binary(max_size=3))
    return api, bytes(raw)


@settings(FUZZ, max_examples=400)
@given(message=_damaged_message())
def test_kms_instance_messages_decode_or_are_proto_errors(message: tuple[str, bytes]) -> None:
    api, raw = message
    schema = APIS[api][0]
    try:
        out = pw.decode(raw, schema)
    except pw.ProtoError:
        return
    kinds = {name: kind for name, kind in schema.values()}
    for name, value in out.items():
        assert name in kinds
        kind = kinds[name]
        assert isinstance(value, {"string": str, "bytes": bytes, "int32": int, "bool": bool,
                                  "repeated string": list}[kind])
        if kind == "int32":
            assert -2**31 <= value < 2**31
