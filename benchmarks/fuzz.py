"""Volume fuzzing of a real ``hsmpool serve``: signed but malformed requests on every front end,
and mutated ciphertexts, with hard bars.

    python -m benchmarks.fuzz [--requests N] [--ciphertexts N]
                              [--front-ends aws-kms secrets alibaba kms-instance]
                              [--connections C] [--sign-processes P] [--seed S]
                              [--json PATH] [--keep]

A real server (``hsmpool serve --workers 2``, its KMS-instance port on with its own TLS CA)
runs on two SoftHSM2 tokens of its own (``var/fuzz-tokens``, labels fuzz-0 and fuzz-1, made
by ``softhsm-config/make-tokens.sh``), with its store, audit trail and log in a temp dir under
``var/`` (deleted afterwards unless ``--keep``). Before the run it is given a stored AES key
(with a description, a tag and an alias), an ECC signing key, a secret and a few ciphertexts of
the AES key (with and without an encryption context).

Then, for each front end, ``--requests`` (100,000) requests, each **correctly signed** for its
protocol, but with malformed contents:

* ``aws-kms`` and ``secrets`` (SigV4, signed by botocore: :func:`benchmarks.server.sign_raw`):
  JSON bodies built from botocore's own service models, every (operation, field) pair in
  turn given a value of a wrong type (and wrong types inside lists, maps and structures),
  random values of the right types, invalid base64 in blob fields, invalid UTF-8 and lone
  surrogates, nesting 64 to 100,000 deep, bodies that are not JSON or are cut short, unknown
  and misspelt targets, wrong content types, bodies beyond the server's limit (declared, or
  chunked without a length);
* ``alibaba`` (ACS3-HMAC-SHA256 with a fresh nonce each, :func:`benchmarks.server.sign_acs3`):
  every action with its parameters (in the query or a form body) wrong in turn: not
  integers, invalid base64, JSON that is invalid, of the wrong type, deeply nested or holds
  lone surrogates, unknown actions and versions, invalid UTF-8 form bodies, replayed nonces;
* ``kms-instance`` (HTTPS, protobuf bodies, signed by the access point's RSA client key,
  :func:`benchmarks.instance_load.signed_request`): messages of every API with random values,
  wrong wire types, invalid UTF-8 in string fields, truncated messages and lengths past the
  end, over-long varints, field number 0, group wire types, random bytes, huge integers,
  mutated ciphertexts, unknown APIs and versions;

and a share (about 13 %) of requests of each with garbled authentication (flipped or cut
signatures, unknown keys, wrong secrets, scopes, dates, headers changed after signing).
Operations that change state never name the stored objects (a valid DisableKey on them would
be a legitimate change); reading and cryptographic ones do. Creating operations always carry
a field of a wrong type. And ``--ciphertexts`` (100,000) mutated ciphertexts of the stored key
(bit flips in the header and the body, truncation, extension and splices of real
ciphertexts, unknown key versions, random blobs; with the right, a wrong or no encryption
context, with and without a KeyId) are sent to Decrypt through the AWS front end.

Requests are made in batches of :data:`BATCH` just before they are sent (a SigV4 request is
good for 5 minutes), signed in ``--sign-processes`` child processes (default 2: botocore's
signer costs about 180 µs a request, an RSA signature about 1 ms); each batch is then sent
over ``--connections`` (8) keep-alive connections (asyncio with uvloop, one request in flight
per connection; a connection the server closes is opened again; TLS for kms-instance), every
answer timed from its request's write to its last byte.

Bars (from the issue; the run exits non-zero if one fails): per front end and for the
ciphertexts: no 5xx, no request without an answer (connection closed or reset before it, or
no answer in :data:`TIMEOUT` s), no answer in 1 s or more, every 4xx typed (a JSON
``__type``/``Code`` or a protobuf ``ErrorCode``), no mutated ciphertext decrypted; at the end
the server is alive with the same worker processes, answers a valid request on each front
end, its log holds no traceback, and the stored objects are as they were.

Results: a table, and ``bench-results/fuzz.json``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import concurrent.futures
import contextlib
import email.utils
import hashlib
import http.client
import json
import multiprocessing
import os
import random
import shutil
import ssl
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import orjson

from benchmarks import instance_load
from benchmarks.server import (
    HOST,
    REGION,
    Server,
    _framing,
    _tree,
    boto_client,
    create_credentials,
    hsmpool_argv,
    hsmpool_bin,
    meta_head,
    sign_acs3,
    sign_raw,
    start_ready,
    write_config,
)
from kms.api import alibaba as ali
from kms.api import protowire as pw
from kms.api.app import MAX_BODY
from kms.api.kms_instance import APIS, ERROR

# The KMS and Secrets Manager operations that only read or compute (they may name the stored
# objects); every other operation may change state and never does.
from tests.reliability.test_fuzz_http import KMS_READ_ONLY, SM_READ_ONLY

ROOT: Final = Path(__file__).resolve().parent.parent
TOKEN_DIR: Final = ROOT / "var" / "fuzz-tokens"
LABEL: Final = "fuzz"
TOKENS: Final = (0, 1)
INSTANCE: Final = "fuzz"
WORKERS: Final = 2
DEFAULT_JSON: Final = ROOT / "bench-results" / "fuzz.json"
FRONT_ENDS: Final = ("aws-kms", "secrets", "alibaba", "kms-instance")
CIPHERTEXTS: Final = "ciphertexts"  # the phase of mutated ciphertexts (AWS Decrypt)
BATCH: Final = 20_000  # requests made, then sent, at a time
CHUNK: Final = 500  # requests a signing process makes per task
ANSWER_BAR: Final = 1.0  # seconds: no answer may take this long (the bar)
TIMEOUT: Final = 15.0  # seconds without an answer: a hang (counted as unanswered)
BIG: Final = b"A" * (MAX_BODY + 65_536)

#: Creating operations and a field each that is given a wrong type, so that none creates.
AWS_BREAK: Final = {"CreateKey": "KeySpec", "CreateSecret": "Name"}
ALI_BREAK: Final = {"CreateKey": "KeySpec", "CreateSecret": "SecretDataType"}
#: Key specs that take seconds to generate: a valid request for one would be slow by right.
SLOW_SPECS: Final = ("RSA_", "HMAC_")


# --- what the children need ----------------------------------------------------------------

Shape = tuple[str, tuple[str, ...], Any]  # (botocore type name, enum values, child)


@dataclass(frozen=True)
class Context:
    """Everything a signing process needs (pickled once per process)."""

    port: int
    instance_port: int
    ak: str
    sk: str
    client_key_id: str
    client_key_der: bytes  # PKCS#8 DER of the client key
    key_names: tuple[str, ...]  # the stored AES key: id, ARN, alias, alias ARN
    sign_key_id: str
    secret_names: tuple[str, ...]  # the stored secret: name, ARN
    account: str
    ciphertexts: tuple[tuple[bytes, tuple[tuple[str, str], ...]], ...]  # (blob, context)
    kms_schema: dict[str, dict[str, Shape]]
    sm_schema: dict[str, dict[str, Shape]]


def _shape(sh: Any, depth: int = 0) -> Shape:
    kind = sh.type_name
    enum = tuple(getattr(sh, "enum", None) or ())
    child: Any = None
    if depth < 4:
        if kind == "structure":
            child = {k: _shape(v, depth + 1) for k, v in sh.members.items()}
        elif kind == "list":
            child = _shape(sh.member, depth + 1)
        elif kind == "map":
            child = _shape(sh.value, depth + 1)
    return kind, enum, child


def aws_schema(service: str) -> dict[str, dict[str, Shape]]:
    """Operation -> input member -> shape, from botocore's model of ``service``, for the
    operations the server has (the others are only unknown targets, sent as such)."""
    import botocore.session

    from kms.api import aws_kms, aws_secrets

    served = aws_kms.OPERATIONS if service == "kms" else aws_secrets.OPERATIONS
    model = botocore.session.get_session().get_service_model(service)
    out: dict[str, dict[str, Shape]] = {}
    for op in model.operation_names:
        if op not in served:
            continue
        ish = model.operation_model(op).input_shape
        out[op] = {} if ish is None else {k: _shape(v) for k, v in ish.members.items()}
    return out


# --- values --------------------------------------------------------------------------------

INTS: Final = (0, 1, -1, 7, 16, 32, 100, 1000, 1024, 1025, 4096, 2**31 - 1, 2**31, -2**31,
               2**63 - 1, -2**63, 2**64, 10**30)
#: Values of every JSON type; a field gets those not of its own type.
WRONG: Final[tuple[Any, ...]] = (True, False, 0, -1, 1.5, 2**64, -2**63 - 1, 10**40, 1e308,
                                 -0.0, "", "x", "\u0000", "A" * 5000, "not base64!", [],
                                 [1, "a", None], [[[]]], {}, {"a": 1}, {"": [None]},
                                 {"KeyId": {"KeyId": []}})
BAD_B64: Final = ("", "=", "a", "abc", "!!!!", "YQ", "YQ==YQ==", "\u00e9\u00e9", "A" * 10_001,
                  "-_-_", "YWJj\n", " YWJj", "YWJj====", "Y", "\u0000YWJj", "YW Jj", "%59%57",
                  "YWJj=", "====", "YWJjZA=", "\U0001f600")
BAD_UTF8: Final = (b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1",
                   b"\xf0\x28\x8c\xbc", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80",
                   b"\xe2\x82", b"\x80", b"\xf4\x90\x80\x80")
SURROGATES: Final = (b"\\ud800", b"\\udc00", b"\\ud800\\u0041", b"\\udfff\\ud800", b"\\ud83d")
DEPTHS: Final = (64, 512, 1023, 1024, 1025, 4000, 20_000, 100_000)
NOT_JSON: Final = (b"", b"null", b"[]", b"1", b'"x"', b"{", b"}", b"{]", b'{"KeyId": "a",}',
                   b'{"KeyId" "a"}', b"\xef\xbb\xbf{}", b'{"a":1}{"b":2}', b"NaN", b"\x00" * 8,
                   b'{"KeyId": 1e999}', b'{"KeyId": -}', b"  \n\t ", b'{"KeyId": "a"} x',
                   b"[" * 10, b'{"KeyId": "\\x41"}', b'{"KeyId": "\\u12"}', b'{"a":' * 3,
                   b"true", b'{"KeyId": 0777}', b"{'KeyId': 'a'}")
TEXTS: Final = ("", " ", "a", "alias/", "alias/aws/x", "arn:aws:kms:us-east-1:1:key/x",
                "00000000-0000-0000-0000-000000000000", "\u0000", "\u00e9t\u00e9", "\u200b",
                "key/*", "*", "../../etc/passwd", "' OR 1=1 --", "%s%n", "\\", '"', "\U0001f512",
                "a" * 300, "b" * 5000)
CONTENT_TYPES: Final = (None, "application/json", "text/plain", "application/x-amz-json-1.0",
                        "application/x-amz-json-1.1; charset=utf-8", "APPLICATION/X-AMZ-JSON-1.1",
                        "application/x-amz-json-1.2", "", "multipart/form-data; boundary=x",
                        "application/x-www-form-urlencoded", "application/x-amz-json-1.1 x")


def _wrong_for(kind: str, v: Any) -> bool:
    """Whether ``v`` is of a wrong JSON type for a field of botocore type ``kind``."""
    if kind in ("string", "blob"):
        return not isinstance(v, str)
    if kind in ("integer", "long"):
        return not isinstance(v, int) or isinstance(v, bool)
    if kind == "boolean":
        return not isinstance(v, bool)
    if kind in ("double", "float", "timestamp"):
        return not isinstance(v, int | float) or isinstance(v, bool)
    if kind == "list":
        return not isinstance(v, list)
    return not isinstance(v, dict)


_WRONG_BY_KIND: dict[str, tuple[Any, ...]] = {}


def wrong_values(kind: str) -> tuple[Any, ...]:
    got = _WRONG_BY_KIND.get(kind)
    if got is None:
        got = _WRONG_BY_KIND[kind] = tuple(v for v in WRONG if _wrong_for(kind, v))
    return got


_ALNUM: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class Gen:
    """Makes the requests of one chunk (deterministic for its seed)."""

    def __init__(self, ctx: Context, seed: int) -> None:
        self.c = ctx
        self.r = random.Random(seed)
        self._private: Any = None

    # --- small things

    def text(self) -> str:
        r = self.r
        if r.random() < 0.5:
            return r.choice(TEXTS)
        n = r.choice((1, 8, 20, 64, 300))
        if r.random() < 0.5:
            return "".join(r.choice("abcdefghijklmnopqrstuvwxyz0123456789-_/:") for _ in
                           range(n))
        # any code point but surrogates and line breaks
        out = []
        for _ in range(n):
            cp = r.randrange(0x20, 0x2FFFF)
            out.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "?")
        return "".join(out)

    def ascii_word(self, n: int = 12) -> str:
        return "".join(self.r.choice(_ALNUM) for _ in range(n))

    def blob(self) -> bytes:
        r = self.r
        return r.randbytes(r.choice((0, 1, 12, 16, 32, 64, 100, 1024, 4097, 6145, 7000)))

    def ciphertext(self) -> tuple[bytes, dict[str, str] | None]:
        blob, ctx = self.r.choice(self.c.ciphertexts)
        return blob, dict(ctx) if ctx else None

    def nest(self, depth: int) -> bytes:
        if self.r.random() < 0.5:
            return b"[" * depth + b"]" * depth
        depth = min(depth, 40_000)
        return b'{"a":' * depth + b"1" + b"}" * depth

    # --- AWS JSON (KMS and Secrets Manager) --------------------------------------------

    def ids_for(self, service: str, name: str) -> tuple[str, ...] | None:
        c = self.c
        if name in ("KeyId", "DestinationKeyId", "SourceKeyId", "TargetKeyId", "KmsKeyId"):
            return c.key_names + (c.sign_key_id,)
        if service == "secretsmanager" and name in ("SecretId", "Name"):
            return c.secret_names
        return None

    def right(self, service: str, shape: Shape, name: str, ro: bool, depth: int = 0) -> Any:
        r = self.r
        kind, enum, child = shape
        if kind == "string":
            ids = self.ids_for(service, name) if ro else None
            if ids and r.random() < 0.6:
                return r.choice(ids)
            if enum and r.random() < 0.6:
                good = [e for e in enum if not e.startswith(SLOW_SPECS)]
                if good:
                    return r.choice(good)
            return self.text()
        if kind == "blob":
            if ro and name == "CiphertextBlob" and r.random() < 0.5:
                return base64.b64encode(self.ciphertext()[0]).decode()
            return base64.b64encode(self.blob()).decode()
        if kind in ("integer", "long"):
            return r.choice(INTS)
        if kind == "boolean":
            return r.random() < 0.5
        if kind in ("double", "float", "timestamp"):
            return r.choice((0, 1.5, -1, 1.7e9, 1e20))
        if depth > 3 or child is None:
            return None
        if kind == "list":
            return [self.right(service, child, name, ro, depth + 1)
                    for _ in range(r.choice((0, 1, 2, 3)))]
        if kind == "map":
            return {self.text(): self.right(service, child, name, ro, depth + 1)
                    for _ in range(r.choice((0, 1, 2)))}
        return {k: self.right(service, v, k, ro, depth + 1) for k, v in child.items()
                if r.random() < 0.4}

    def wrong(self, shape: Shape, i: int) -> Any:
        """A value of a wrong type for ``shape`` (the ``i``-th of them, in turn), or, for a
        list, map or structure, sometimes one with wrong values inside."""
        kind, _, child = shape
        r = self.r
        if child is not None and r.random() < 0.4:
            if kind == "list":
                return [self.wrong(child, i)]
            if kind == "map":
                return {"k": self.wrong(child, i)}
            if isinstance(child, dict) and child:
                name = r.choice(sorted(child))
                return {name: self.wrong(child[name], i)}
        values = wrong_values(kind)
        return values[i % len(values)]

    def aws_body(self, service: str, op: str, ro: bool, wrong: str | None = None,
                 i: int = 0) -> dict[str, Any]:
        schema = (self.c.kms_schema if service == "kms" else self.c.sm_schema).get(op, {})
        r = self.r
        body = {name: self.right(service, shape, name, ro) for name, shape in schema.items()
                if r.random() < 0.5}
        if wrong is not None:
            body[wrong] = self.wrong(schema[wrong], i)
        breaking = AWS_BREAK.get(op)  # a creating operation: never valid
        if breaking is not None and breaking in schema and breaking != wrong:
            values = wrong_values(schema[breaking][0])
            body[breaking] = values[r.randrange(len(values))]
        if r.random() < 0.15:
            body[self.text()] = self.right(service, ("string", (), None), "", ro)
        return body

    def aws(self, front: str, i: int) -> tuple[bytes, str]:
        r = self.r
        service = "kms" if front == "aws-kms" else "secretsmanager"
        schema = self.c.kms_schema if service == "kms" else self.c.sm_schema
        read_only = KMS_READ_ONLY if service == "kms" else SM_READ_ONLY
        prefix = "TrentService." if service == "kms" else "secretsmanager."
        kind = r.choices(AWS_KINDS, AWS_WEIGHTS)[0]
        ops = sorted(schema)
        op = r.choice(ops)
        ctype: str | None = "application/x-amz-json-1.1"
        target = prefix + op
        if kind == "wrong-type":
            pairs = _pairs(schema)
            op, member = pairs[i % len(pairs)]
            target = prefix + op
            raw = _dumps(self.aws_body(service, op, op in read_only, member, i // len(pairs)))
        elif kind == "bad-base64":
            blobs = [(o, m) for o, m in _pairs(schema) if schema[o][m][0] == "blob"]
            op, member = r.choice(blobs)
            target = prefix + op
            body = self.aws_body(service, op, op in read_only)
            body[member] = r.choice(BAD_B64)
            raw = _dumps(body)
        elif kind == "bad-utf8":
            body = self.aws_body(service, op, op in read_only)
            names = [m for m, s in schema[op].items() if s[0] == "string"] or ["KeyId"]
            body[r.choice(names)] = "@@BAD@@"
            bad = r.choice(BAD_UTF8) if r.random() < 0.7 else r.choice(SURROGATES)
            raw = _dumps(body).replace(b"@@BAD@@", b"x" * r.randrange(3) + bad, 1)
        elif kind == "deep-nesting":
            body = self.aws_body(service, op, op in read_only)
            body[r.choice(sorted(schema[op]) or ["KeyId"])] = "@@NEST@@"
            raw = _dumps(body).replace(b'"@@NEST@@"', self.nest(r.choice(DEPTHS)), 1)
        elif kind == "not-json":
            raw = r.choice(NOT_JSON) if r.random() < 0.7 else self.r.randbytes(
                r.randrange(1, 200))
            if op in AWS_BREAK:  # '\xef\xbb\xbf{}' and '{"KeyId": 1e999}' are objects
                target = prefix + "ListAliases" if service == "kms" else prefix + "ListSecrets"
        elif kind == "truncated":
            full = _dumps(self.aws_body(service, op, op in read_only))
            raw = full[:r.randrange(1, max(2, len(full)))]
        elif kind == "unknown-target":
            target = r.choice((
                prefix + self.ascii_word(r.choice((1, 8, 30))), prefix + op.lower(),
                prefix.lower() + op, prefix[:-1] + op, prefix + op + " ", prefix,
                ("secretsmanager." if service == "kms" else "TrentService.") + op,
                prefix + "A" * 3000, prefix + op + "." + op, " " + prefix + op, "Trent"))
            raw = _dumps(self.aws_body(service, op, False))
        elif kind == "bad-content-type":
            ctype = r.choice(CONTENT_TYPES)
            raw = _dumps(self.aws_body(service, op, op in read_only))
        elif kind in ("oversized", "oversized-chunked"):
            raw = b'{"Plaintext": "' + BIG[:MAX_BODY + r.randrange(1, 60_000)] + b'"}'
        else:  # random-values, garbled-auth
            raw = _dumps(self.aws_body(service, op, op in read_only))
        req = sign_raw(self.c.ak, self.c.sk, service, target, self.c.port, [raw],
                       content_type=ctype)[0]
        if kind == "oversized":
            req = req[:req.index(b"\r\n\r\n") + 4]  # 413 before the body is read: send none
        elif kind == "oversized-chunked":
            req = _chunked(req)
        elif kind == "garbled-auth":
            req, kind = self.garble_aws(req, service, target, raw, ctype)
        return req, kind

    def garble_aws(self, req: bytes, service: str, target: str, raw: bytes,
                   ctype: str | None) -> tuple[bytes, str]:
        r = self.r
        head, body = _split(req)
        auth = _get(head, b"authorization")
        how = r.choice(AWS_GARBLES)
        c = self.c
        if how == "flip-signature":
            head = _set(head, b"authorization", auth[:-1] + (b"0" if auth[-1:] != b"0" else b"1"))
        elif how == "truncate-signature":
            head = _set(head, b"authorization", auth[:r.randrange(len(auth))])
        elif how == "no-signature":
            head = _set(head, b"authorization", auth.split(b", Signature=")[0])
        elif how == "no-authorization":
            head = _set(head, b"authorization", None)
        elif how == "random-authorization":
            head = _set(head, b"authorization", b"AWS4-HMAC-SHA256 " + _latin(self.text()))
        elif how == "other-scheme":
            head = _set(head, b"authorization", b"Basic " + base64.b64encode(b"a:b"))
        elif how == "binary-authorization":
            head = _set(head, b"authorization", auth[:40] + bytes(r.randrange(0x80, 0x100)
                                                                  for _ in range(20)))
        elif how == "huge-authorization":
            head = _set(head, b"authorization", auth + b"," + b"a" * r.choice((12_000, 20_000)))
        elif how == "duplicate-authorization":
            head = head + b"\r\nAuthorization: " + auth
        elif how == "bad-date":
            head = _set(head, b"x-amz-date", _latin(r.choice(("", "yesterday", "20261304T250000Z",
                                                                 "2026-01-01T00:00:00Z",
                                                                 "99999999T999999Z"))))
        elif how == "old-date":
            head = _set(head, b"x-amz-date", b"20000101T000000Z")
        elif how == "unsigned-header":
            head = head + b"\r\nX-Amz-Fuzz: 1"
        elif how == "target-changed":
            other = "TrentService.ListKeys" if service == "kms" else "secretsmanager.ListSecrets"
            head = _set(head, b"x-amz-target", other.encode())
        elif how == "body-changed":
            body = body[:-1] + (b" " if body[-1:] != b" " else b"\t") if body else b" "
            head = _set(head, b"content-length", str(len(body)).encode())
        else:
            ak, sk, region, svc = c.ak, c.sk, REGION, service
            if how == "unknown-key":
                ak = "AKIA" + self.ascii_word(16).upper()
            elif how == "wrong-secret":
                sk = c.sk[:-1] + ("x" if c.sk[-1] != "x" else "y")
            elif how == "wrong-region":
                region = "eu-fuzz-9"
            else:  # wrong-service
                svc = "secretsmanager" if service == "kms" else "kms"
            return sign_raw(ak, sk, svc, target, c.port, [raw], content_type=ctype,
                            region=region)[0], "garbled-auth"
        return head + b"\r\n\r\n" + body, "garbled-auth"

    # --- Alibaba OpenAPI (ACS3) ----------------------------------------------------------

    def ali_right(self, name: str, ro: bool) -> str:
        r = self.r
        kind = ALI_PARAMS[name]
        c = self.c
        if kind == "id":
            if ro and r.random() < 0.6:
                if name == "SecretName":
                    return c.secret_names[0]
                if name == "AliasName":
                    return c.key_names[2]
                return r.choice(c.key_names[:3] + (c.sign_key_id, _acs_arn(c)))
            return self.text() or "x"
        if kind == "b64":
            if ro and name == "CiphertextBlob" and r.random() < 0.5:
                return base64.b64encode(self.ciphertext()[0]).decode()
            return base64.b64encode(self.blob()).decode()
        if kind == "jsonobj":
            return json.dumps({self.text(): self.text() for _ in range(r.choice((0, 1, 2)))})
        if kind == "jsonlist":
            if name == "Tags":
                return json.dumps([{"TagKey": self.text(), "TagValue": self.text()}])
            return json.dumps([self.text() for _ in range(r.choice((0, 1, 2)))])
        if kind == "int":
            return str(r.choice(INTS))
        if kind == "bool":
            return r.choice(("true", "false"))
        if kind == "enum":
            good = [e for e in ALI_ENUMS[name] if not e.startswith(SLOW_SPECS)]
            return r.choice(good) if good and r.random() < 0.7 else self.text()
        return self.text()

    def ali_wrong(self, name: str, i: int) -> str:
        kind = ALI_PARAMS[name]
        if kind == "jsonobj" or kind == "jsonlist":
            k = i % (len(ALI_WRONG[kind]) + 1)
            if k == len(ALI_WRONG[kind]):  # deep nesting (the query's 16 KiB bound it)
                return self.nest(self.r.choice((64, 1000, 1025, 3000, 5000))).decode()
            return ALI_WRONG[kind][k]
        values = ALI_WRONG.get(kind, ALI_WRONG["id"])
        return values[i % len(values)]

    def ali_params(self, action: str, wrong: str | None = None, i: int = 0) -> dict[str, str]:
        r = self.r
        names = ALI_ACTION_PARAMS.get(action, ("KeyId",))
        ro = action not in ali.BLOCKING
        params = {n: self.ali_right(n, ro) for n in names if r.random() < 0.7}
        if wrong is not None:
            params[wrong] = self.ali_wrong(wrong, i)
        breaking = ALI_BREAK.get(action)  # a creating action: never valid
        if breaking is not None and (breaking != wrong or not params[breaking]):
            params[breaking] = r.choice(ALI_WRONG["enum"][1:])
        if r.random() < 0.1:
            params[self.ascii_word(6)] = self.text()
        return params

    def alibaba(self, i: int) -> tuple[bytes, str]:
        r = self.r
        c = self.c
        kind = r.choices(ALI_KINDS, ALI_WEIGHTS)[0]
        actions = sorted(ALI_ACTION_PARAMS)
        action = r.choice(actions)
        body = b""
        ctype: str | None = None
        version = ali.VERSION
        params: dict[str, str]
        if kind == "wrong-type":
            pairs = [(a, p) for a in actions for p in ALI_ACTION_PARAMS[a]]
            action, name = pairs[i % len(pairs)]
            params = self.ali_params(action, name, i // len(pairs))
        elif kind == "bad-base64":
            pairs = [(a, p) for a in actions for p in ALI_ACTION_PARAMS[a]
                     if ALI_PARAMS[p] == "b64"]
            action, name = r.choice(pairs)
            params = self.ali_params(action)
            params[name] = r.choice(BAD_B64)
        elif kind == "deep-nesting":
            pairs = [(a, p) for a in actions for p in ALI_ACTION_PARAMS[a]
                     if ALI_PARAMS[p] in ("jsonobj", "jsonlist")]
            action, name = r.choice(pairs)
            params = self.ali_params(action)
            params[name] = self.nest(r.choice((64, 1000, 1025, 3000, 5000))).decode()
        elif kind == "lone-surrogates":
            pairs = [(a, p) for a in actions for p in ALI_ACTION_PARAMS[a]
                     if ALI_PARAMS[p] in ("jsonobj", "jsonlist")]
            action, name = r.choice(pairs)
            params = self.ali_params(action)
            s = r.choice(SURROGATES).decode()
            params[name] = (f'{{"{s}": "x"}}' if ALI_PARAMS[name] == "jsonobj"
                            else f'["{s}"]') if r.random() < 0.5 else f'{{"k": "{s}"}}'
        elif kind in ("form-body", "bad-utf8-form", "deep-form"):
            form = self.ali_params(action)
            if kind == "deep-form":
                pairs = [p for p in ALI_ACTION_PARAMS[action]
                         if ALI_PARAMS[p] in ("jsonobj", "jsonlist")] or ["EncryptionContext"]
                form[r.choice(pairs)] = self.nest(r.choice((5000, 20_000, 60_000))).decode()
            body = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}"
                            for k, v in form.items()).encode()
            if kind == "bad-utf8-form":
                cut = r.randrange(len(body) + 1)
                body = body[:cut] + r.choice(BAD_UTF8) + body[cut:]
            ctype = r.choice(("application/x-www-form-urlencoded",
                              "application/x-www-form-urlencoded; charset=utf-8"))
            params = {}
        elif kind == "unknown-action":
            action = r.choice((self.ascii_word(r.choice((1, 8, 30))), action.lower(),
                               action + "s", "", " " + action, "A" * 3000))
            params = self.ali_params("DescribeKey")
        elif kind == "wrong-version":
            version = r.choice(("", "2016-01-21", "2014-05-26", "x", ali.VERSION + " "))
            params = self.ali_params(action)
        elif kind in ("oversized", "oversized-chunked"):
            params = {}
            body = BIG[:MAX_BODY + r.randrange(1, 60_000)]
            ctype = "application/x-www-form-urlencoded"
        else:  # random-values, replay, garbled-auth
            params = self.ali_params(action)
        date = None
        if kind == "garbled-auth" and r.random() < 0.15:
            date = r.choice(("2001-01-01T00:00:00Z", "2099-01-01T00:00:00Z", "yesterday",
                             "2026-13-45T99:99:99Z", ""))
        req = sign_acs3(c.ak, c.sk, c.port, action, [params], body=body, content_type=ctype,
                        version=version, date=date)[0]
        if kind == "oversized":
            req = req[:req.index(b"\r\n\r\n") + 4]
        elif kind == "oversized-chunked":
            req = _chunked(req)
        elif kind == "replay":
            req = req + req  # the same nonce twice (pipelined): the second is refused
        elif kind == "garbled-auth" and date is None:
            req = self.garble_ali(req, action, params)
        return req, kind

    def garble_ali(self, req: bytes, action: str, params: dict[str, str]) -> bytes:
        r = self.r
        c = self.c
        head, body = _split(req)
        auth = _get(head, b"authorization")
        how = r.choice(ALI_GARBLES)
        if how == "flip-signature":
            head = _set(head, b"authorization", auth[:-1] + (b"0" if auth[-1:] != b"0" else b"1"))
        elif how == "no-authorization":
            head = _set(head, b"authorization", None)
        elif how == "other-scheme":
            head = _set(head, b"authorization", b"ACS3-HMAC-SHA1 " + auth.split(b" ", 1)[1])
        elif how == "random-authorization":
            head = _set(head, b"authorization", b"ACS3-HMAC-SHA256 " + _latin(self.text()))
        elif how == "no-nonce":
            head = _set(head, b"x-acs-signature-nonce", None)
        elif how == "unsigned-nonce":
            head = _set(head, b"authorization", auth.replace(b"x-acs-signature-nonce;", b""))
        elif how == "body-changed":
            body = body + b"x"
            head = _set(head, b"content-length", str(len(body)).encode())
        elif how == "action-changed":
            head = _set(head, b"x-acs-action", b"DescribeKey" if action != "DescribeKey"
                        else b"ListKeys")
        elif how == "non-ascii-signature":
            head = _set(head, b"authorization", auth[:-3] + b"\xe9\xff\xa0")
        elif how == "non-ascii-content-sha":
            head = _set(head, b"x-acs-content-sha256", b"\xe9" * 64)
        elif how in ("v1-signature", "v1-non-ascii"):
            query = "&".join(f"{k}={quote(v, safe='')}" for k, v in {
                **params, "Action": action, "Version": ali.VERSION, "AccessKeyId": c.ak,
                "SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0",
                "SignatureNonce": uuid.uuid4().hex, "Timestamp": "2026-01-01T00:00:00Z",
                "Signature": base64.b64encode(r.randbytes(20)).decode()
                if how == "v1-signature" else "\u00e9\u00ff=="}.items())
            return (f"POST /?{query} HTTP/1.1\r\nhost: {HOST}:{c.port}\r\n"
                    "content-length: 0\r\n\r\n").encode()
        else:
            ak, sk = c.ak, c.sk
            if how == "unknown-key":
                ak = "LTAI" + self.ascii_word(20)
            else:  # wrong-secret
                sk = c.sk[:-1] + ("x" if c.sk[-1] != "x" else "y")
            return sign_acs3(ak, sk, c.port, action, [params])[0]
        return head + b"\r\n\r\n" + body

    # --- the KMS-instance API (protobuf, client-key RSA signatures) ----------------------

    @property
    def private_key(self) -> Any:
        if self._private is None:
            from cryptography.hazmat.primitives.serialization import load_der_private_key

            self._private = load_der_private_key(self.c.client_key_der, None)
        return self._private

    def pb_value(self, name: str, kind: str) -> Any:
        r = self.r
        c = self.c
        if kind == "string":
            if name == "KeyId" and r.random() < 0.6:
                return r.choice(c.key_names[:3] + (c.sign_key_id,))
            if name == "SecretName" and r.random() < 0.6:
                return c.secret_names[0]
            if name == "Algorithm" and r.random() < 0.5:
                return r.choice(("AES_GCM", "SM4_GCM", "RSA_PSS_SHA_256", "ECDSA_SHA_256",
                                 "RSAES_OAEP_SHA_256", "SM2DSA"))
            if name == "MessageType" and r.random() < 0.5:
                return r.choice(("RAW", "DIGEST"))
            return self.text()
        if kind == "bytes":
            if name == "CiphertextBlob" and r.random() < 0.5:
                return self.mutate(self.ciphertext()[0])[0] if r.random() < 0.6 \
                    else self.ciphertext()[0]
            return self.blob()
        if kind == "int32":
            return r.choice(INTS[:14])
        if kind == "bool":
            return r.random() < 0.5
        return [self.text() for _ in range(r.choice((0, 1, 2)))]

    def pb_fields(self, schema: pw.Schema) -> dict[str, Any]:
        return {name: self.pb_value(name, kind) for name, kind in schema.values()
                if self.r.random() < 0.7}

    def kms_instance(self, i: int) -> tuple[bytes, str]:
        r = self.r
        c = self.c
        kind = r.choices(PB_KINDS, PB_WEIGHTS)[0]
        apis = sorted(APIS)
        api = r.choice(apis)
        schema = APIS[api][0]
        numbers = sorted(schema)
        extra = {"x-kms-fuzznonce": uuid.uuid4().hex}
        date: str | None = None
        if kind == "random-values":
            body = pw.encode(self.pb_fields(schema), schema)
        elif kind == "wrong-wire-type":
            pairs = [(a, n) for a in apis for n in sorted(APIS[a][0])]
            api, number = pairs[i % len(pairs)]
            schema = APIS[api][0]
            fields = self.pb_fields(schema)
            fields.pop(schema[number][0], None)
            good = pw.encode(fields, schema)
            kind_of = schema[number][1]
            wire = r.choice([w for w in (0, 1, 2, 5) if w != (0 if kind_of in ("int32", "bool")
                                                                else 2)])
            body = _shuffle_in(r, good, _pb_field(number, wire, r))
        elif kind == "bad-utf8":
            strings = [n for n in numbers if schema[n][1] in ("string", "repeated string")]
            if not strings:
                api, schema = "Encrypt", APIS["Encrypt"][0]
                strings = [1]
            number = r.choice(strings)
            text = b"x" * r.randrange(3) + r.choice(BAD_UTF8)
            body = pw.encode(self.pb_fields(schema), schema) + _tag(number, 2) + \
                _varint(len(text)) + text
        elif kind == "truncated":
            full = pw.encode(self.pb_fields(schema), schema)
            body = full[:r.randrange(len(full))] if full else b"\x0a"
        elif kind == "bad-length":
            number = r.choice(numbers)
            body = _tag(number, 2) + _varint(r.choice((1, 100, 2**31, 2**63))) + b"ab"
        elif kind == "long-varint":
            body = r.choice((b"\xff" * 11, b"\x08" + b"\x80" * 10 + b"\x01", b"\x08\xff",
                             b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"))
        elif kind == "field-zero":
            body = _tag(0, r.choice((0, 2))) + b"\x01\x01"
        elif kind == "bad-wire-type":
            body = _tag(r.choice(numbers + [99]), r.choice((3, 4, 6, 7))) + r.randbytes(4)
        elif kind == "random-bytes":
            body = r.randbytes(r.randrange(1, 300))
        elif kind == "empty":
            body = b""
        elif kind == "huge-values":
            fields = self.pb_fields(schema)
            for name, k in schema.values():
                if k == "int32":
                    fields[name] = r.choice((2**31 - 1, -2**31, 2**63 - 1, -1, 1 << 40))
                elif k == "bytes" and r.random() < 0.5:
                    fields[name] = r.randbytes(r.choice((6145, 7000, 65_536)))
            body = pw.encode(fields, schema)
        elif kind == "mutated-ciphertext":
            api = r.choice(("Decrypt", "AdvanceDecrypt"))
            schema = APIS[api][0]
            blob = self.mutate(self.ciphertext()[0])[0]
            if api == "AdvanceDecrypt" and r.random() < 0.5:
                blob = b"$\x00\x02" + str(uuid.UUID(bytes=r.randbytes(16))).encode() + blob[18:]
            fields = self.pb_fields(schema)
            fields["CiphertextBlob"] = blob
            body = pw.encode(fields, schema)
        elif kind == "unknown-api":
            api = r.choice((self.ascii_word(r.choice((1, 8, 30))), api.lower(), api + "s", "",
                            "A" * 3000))
            body = pw.encode(self.pb_fields(APIS["Encrypt"][0]), APIS["Encrypt"][0])
        elif kind == "wrong-version":
            extra["x-kms-apiversion"] = r.choice(("", "dkms-gcs-0.1", "dkms-gcs-0.2 ", "x"))
            body = pw.encode(self.pb_fields(schema), schema)
        elif kind in ("oversized", "oversized-chunked"):
            body = BIG[:MAX_BODY + r.randrange(1, 60_000)]
        else:  # garbled-auth
            body = pw.encode(self.pb_fields(schema), schema)
            if r.random() < 0.25:
                date = r.choice(("Mon, 01 Jan 2001 00:00:00 GMT",
                                 email.utils.formatdate(time.time() + 3600, usegmt=True),
                                 "yesterday", "", "Tue, 31 Feb 2026 25:61:61 GMT",
                                 "Mon, 01 Jan 99999 00:00:00 GMT",
                                 "Thu, 01 Jan 1970 00:00:00 +9999"))
            if r.random() < 0.1:
                extra["x-kms-acccesskeyid"] = r.choice(("", "KAAP." + str(uuid.uuid4()),
                                                        _latin(self.text()).decode("latin-1")))
        req = instance_load.signed_request(self.private_key, c.client_key_id, c.instance_port,
                                           api, body, date, extra)
        if kind == "oversized":
            req = req[:req.index(b"\r\n\r\n") + 4]
        elif kind == "oversized-chunked":
            req = _chunked(req)
        elif kind == "garbled-auth" and date is None and "x-kms-acccesskeyid" not in extra:
            req = self.garble_instance(req)
        return req, kind

    def garble_instance(self, req: bytes) -> bytes:
        r = self.r
        head, body = _split(req)
        auth = _get(head, b"authorization")
        how = r.choice(PB_GARBLES)
        if how == "flip-signature":
            k = r.randrange(7, len(auth) - 2)
            ch = auth[k:k + 1]
            head = _set(head, b"authorization", auth[:k] + (b"A" if ch != b"A" else b"B")
                        + auth[k + 1:])
        elif how == "not-base64":
            head = _set(head, b"authorization", b"Bearer " + _latin(self.text()) + b"!")
        elif how == "truncate-signature":
            head = _set(head, b"authorization", auth[:r.randrange(len(auth))])
        elif how == "no-authorization":
            head = _set(head, b"authorization", None)
        elif how == "other-scheme":
            head = _set(head, b"authorization", b"Basic " + auth[7:])
        elif how == "huge-authorization":
            head = _set(head, b"authorization", auth + b"A" * 12_000)
        elif how == "body-changed":
            body = body + b"\x00"
            head = _set(head, b"content-length", str(len(body)).encode())
        elif how == "header-changed":
            head = _set(head, b"x-kms-signaturemethod", b"RSA_PKCS1_SHA_1")
        else:  # no-date
            head = _set(head, b"date", None)
        return head + b"\r\n\r\n" + body

    # --- mutated ciphertexts (AWS Decrypt) -----------------------------------------------

    def mutate(self, blob: bytes) -> tuple[bytes, str]:
        r = self.r
        how = r.choice(CT_MUTATIONS)
        b = bytearray(blob)
        if how == "bit-flip":
            for _ in range(r.choice((1, 1, 1, 2, 3, 8))):
                p = r.randrange(len(b))
                b[p] ^= 1 << r.randrange(8)
        elif how == "header-flip":
            p = r.randrange(18)
            b[p] ^= 1 << r.randrange(8)
        elif how == "tag-flip":
            p = len(b) - 1 - r.randrange(16)
            b[p] ^= 1 << r.randrange(8)
        elif how == "truncate":
            b = b[:r.randrange(len(b))]
        elif how == "extend":
            b += r.randbytes(r.choice((1, 1, 16, 64)))
        elif how == "splice":
            other = self.ciphertext()[0]
            k = r.randrange(1, len(b))
            b = b[:k] + other[r.randrange(1, len(other)):]
        elif how == "version-swap":  # another (unknown) key version, or algorithm
            b[1:17] = r.randbytes(16) if r.random() < 0.8 else b[1:17]
            if r.random() < 0.5:
                b[17] = r.choice((0, 2, 3, 255))
        elif how == "body-swap":
            other = self.ciphertext()[0]
            b = b[:30] + other[30:]
        elif how == "delete":
            p = r.randrange(len(b))
            del b[p:p + r.choice((1, 4, 16))]
        elif how == "insert":
            p = r.randrange(len(b))
            b[p:p] = r.randbytes(r.choice((1, 4, 16)))
        elif how == "zero":
            p = r.randrange(len(b))
            b[p:p + 16] = bytes(len(b[p:p + 16]))
        else:  # random
            b = bytearray(r.randbytes(r.choice((0, 1, 17, 18, 46, 47, 64, 100, 300))))
            if b and r.random() < 0.5:
                b[0] = 1
        return bytes(b), how

    def ciphertext_request(self, i: int) -> tuple[bytes, str]:
        r = self.r
        c = self.c
        blob, ctx = self.ciphertext()
        originals = {ct for ct, _ in c.ciphertexts}
        for _ in range(8):
            mutated, how = self.mutate(blob)
            if mutated not in originals:
                break
        else:  # (never seen: mutations that give a real ciphertext back are redrawn)
            mutated, how = blob + b"\x00", "extend"
        body: dict[str, Any] = {"CiphertextBlob": base64.b64encode(mutated).decode()}
        u = r.random()
        if u < 0.4 and ctx:
            body["EncryptionContext"] = ctx
        elif u < 0.55:
            body["EncryptionContext"] = {self.text(): self.text()}
        if r.random() < 0.3:
            body["KeyId"] = r.choice(c.key_names + (c.sign_key_id,))
        req = sign_raw(c.ak, c.sk, "kms", "TrentService.Decrypt", c.port, [_dumps(body)])[0]
        return req, how


# --- tables of the generators --------------------------------------------------------------

AWS_KINDS: Final = ("wrong-type", "random-values", "bad-base64", "bad-utf8", "deep-nesting",
                    "not-json", "truncated", "unknown-target", "bad-content-type", "oversized",
                    "oversized-chunked", "garbled-auth")
AWS_WEIGHTS: Final = (30, 14, 8, 8, 5, 5, 6, 5, 3, 0.4, 0.4, 13)
AWS_GARBLES: Final = ("flip-signature", "truncate-signature", "no-signature", "no-authorization",
                      "random-authorization", "other-scheme", "binary-authorization",
                      "huge-authorization", "duplicate-authorization", "bad-date", "old-date",
                      "unsigned-header", "target-changed", "body-changed", "unknown-key",
                      "wrong-secret", "wrong-region", "wrong-service")

ALI_PARAMS: Final = {
    **dict.fromkeys(("KeyId", "DestinationKeyId", "AliasName", "SecretName", "KeyVersionId",
                     "EncryptionKeyId", "VersionId"), "id"),
    **dict.fromkeys(("Plaintext", "CiphertextBlob", "Digest", "Value", "PublicKeyBlob",
                     "ImportToken", "EncryptedKeyMaterial"), "b64"),
    **dict.fromkeys(("EncryptionContext", "SourceEncryptionContext",
                     "DestinationEncryptionContext"), "jsonobj"),
    **dict.fromkeys(("Tags", "TagKeys", "VersionStages"), "jsonlist"),
    **dict.fromkeys(("PageNumber", "PageSize", "PendingWindowInDays", "NumberOfBytes",
                     "KeyMaterialExpireUnix", "PasswordLength", "RecoveryWindowInDays"), "int"),
    **dict.fromkeys(("ExcludeNumbers", "ExcludePunctuation", "ExcludeUppercase",
                     "ExcludeLowercase", "RequireEachIncludedType", "EnableAutomaticRotation",
                     "ForceDeleteWithoutRecovery"), "bool"),
    **dict.fromkeys(("KeySpec", "KeyUsage", "Origin", "Algorithm", "WrappingKeySpec",
                     "WrappingAlgorithm", "SecretDataType", "VersionStage", "RotationInterval"),
                    "enum"),
    **dict.fromkeys(("Description", "ExcludeCharacters", "SecretData"), "text"),
}
ALI_ENUMS: Final = {
    "KeySpec": tuple(ali.SPECS), "KeyUsage": tuple(ali.USAGES),
    "Origin": ("Aliyun_KMS", "EXTERNAL"), "Algorithm": tuple(ali.SIGNING) + tuple(ali.ENCRYPTION),
    "WrappingKeySpec": ("RSA_2048", "EC_SM2"),
    "WrappingAlgorithm": ("RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_1", "SM2PKE", "RSAES_PKCS1_V1_5"),
    "SecretDataType": ("text", "binary"), "VersionStage": tuple(ali.STAGES),
    "RotationInterval": ("30d", "2592000s", "1h", "7d", "731d")}
ALI_WRONG: Final[dict[str, tuple[str, ...]]] = {
    "int": ("", "abc", "1.5", "1e3", "0x10", "9" * 5000, " 1", "-0", "\u0661\u0662", "1_000",
            "+5", "\u0000", "-1", "99999999999999999999999", "NaN", "\u00bd"),
    "b64": BAD_B64,
    "jsonobj": ("", "x", "[]", "1", "null", '{"a": 1}', '{"a": null}', '{"a": {"b": "c"}}', "{",
                '{"\\ud800": "x"}', '{"a": "\\udc00"}', "NaN", '{"a": "b"} junk', "1e999",
                '{"a": 1e999}', '{"a": -}', '"\\ud800"'),
    "jsonlist": ("", "x", "{}", "1", "[", "[1,2]", '[{"TagKey": 1}]', "[null]", '["\\ud800"]',
                 '[{"TagKey": "\\udfff", "TagValue": "v"}]', "[[]]", '[{"TagKey": {}}]'),
    "bool": ("", "yes", "TRUE ", "1", "\u0000", "tru"),
    "enum": ("", "x", "aliyun_aes_256", "Aliyun_AES_256 ", "RSA_2048\u0000", "\u00e9"),
    "id": ("", " ", "a" * 3000, "acs:kms:", "acs:kms:x:y:key/", "\u0000", "alias/", "key/",
           "acs:kms:us-east-1:1:alias/", "\U0001f512"),
    "text": ("", "\u0000", "a" * 5000, "\u200b", "\U0001f512"),
}
_P = str.split
ALI_ACTION_PARAMS: Final[dict[str, tuple[str, ...]]] = {a: tuple(_P(p)) for a, p in {
    "CreateKey": "KeySpec KeyUsage Origin Description", "DescribeKey": "KeyId",
    "ListKeys": "PageNumber PageSize", "EnableKey": "KeyId", "DisableKey": "KeyId",
    "ScheduleKeyDeletion": "KeyId PendingWindowInDays", "CancelKeyDeletion": "KeyId",
    "Encrypt": "KeyId Plaintext EncryptionContext", "Decrypt": "CiphertextBlob EncryptionContext",
    "ReEncrypt": "CiphertextBlob DestinationKeyId SourceEncryptionContext "
                 "DestinationEncryptionContext",
    "GenerateDataKey": "KeyId KeySpec NumberOfBytes EncryptionContext",
    "GenerateDataKeyWithoutPlaintext": "KeyId KeySpec NumberOfBytes EncryptionContext",
    "GetRandomPassword": "PasswordLength ExcludeCharacters ExcludeNumbers ExcludePunctuation "
                         "ExcludeUppercase ExcludeLowercase RequireEachIncludedType",
    "ExportDataKey": "CiphertextBlob WrappingKeySpec WrappingAlgorithm PublicKeyBlob "
                     "EncryptionContext",
    "GenerateAndExportDataKey": "KeyId WrappingKeySpec WrappingAlgorithm PublicKeyBlob KeySpec "
                                "NumberOfBytes EncryptionContext",
    "GetParametersForImport": "KeyId WrappingKeySpec WrappingAlgorithm",
    "ImportKeyMaterial": "KeyId ImportToken EncryptedKeyMaterial KeyMaterialExpireUnix",
    "CreateKeyVersion": "KeyId", "UpdateRotationPolicy": "KeyId EnableAutomaticRotation "
                                                         "RotationInterval",
    "ListKeyVersions": "KeyId PageNumber PageSize", "DescribeKeyVersion": "KeyId KeyVersionId",
    "AsymmetricSign": "KeyId KeyVersionId Algorithm Digest",
    "AsymmetricVerify": "KeyId KeyVersionId Algorithm Digest Value",
    "AsymmetricEncrypt": "KeyId KeyVersionId Algorithm Plaintext",
    "AsymmetricDecrypt": "KeyId KeyVersionId Algorithm CiphertextBlob",
    "GetPublicKey": "KeyId KeyVersionId", "TagResource": "KeyId Tags",
    "UntagResource": "KeyId TagKeys", "ListResourceTags": "KeyId",
    "CreateAlias": "AliasName KeyId", "UpdateAlias": "AliasName KeyId",
    "DeleteAlias": "AliasName", "ListAliases": "PageNumber PageSize",
    "ListAliasesByKeyId": "KeyId PageNumber PageSize",
    "CreateSecret": "SecretName SecretData SecretDataType VersionId Description EncryptionKeyId",
    "GetSecretValue": "SecretName VersionId VersionStage",
    "PutSecretValue": "SecretName SecretData SecretDataType VersionId VersionStages",
    "DescribeSecret": "SecretName", "ListSecrets": "PageNumber PageSize",
    "DeleteSecret": "SecretName ForceDeleteWithoutRecovery RecoveryWindowInDays",
    "RestoreSecret": "SecretName", "RotateSecret": "SecretName VersionId"}.items()}
ALI_KINDS: Final = ("wrong-type", "random-values", "bad-base64", "deep-nesting",
                    "lone-surrogates", "form-body", "bad-utf8-form", "deep-form",
                    "unknown-action", "wrong-version", "replay", "oversized",
                    "oversized-chunked", "garbled-auth")
ALI_WEIGHTS: Final = (28, 14, 7, 4, 4, 6, 4, 2, 5, 2, 2, 0.4, 0.4, 13)
ALI_GARBLES: Final = ("flip-signature", "no-authorization", "other-scheme",
                      "random-authorization", "no-nonce", "unsigned-nonce", "body-changed",
                      "action-changed", "non-ascii-signature", "non-ascii-content-sha",
                      "v1-signature", "v1-non-ascii", "unknown-key", "wrong-secret")

PB_KINDS: Final = ("random-values", "wrong-wire-type", "bad-utf8", "truncated", "bad-length",
                   "long-varint", "field-zero", "bad-wire-type", "random-bytes", "empty",
                   "huge-values", "mutated-ciphertext", "unknown-api", "wrong-version",
                   "oversized", "oversized-chunked", "garbled-auth")
PB_WEIGHTS: Final = (18, 14, 7, 7, 4, 2, 2, 3, 5, 1, 4, 8, 4, 2, 0.4, 0.4, 13)
PB_GARBLES: Final = ("flip-signature", "not-base64", "truncate-signature", "no-authorization",
                     "other-scheme", "huge-authorization", "body-changed", "header-changed",
                     "no-date")
CT_MUTATIONS: Final = ("bit-flip", "bit-flip", "header-flip", "tag-flip", "truncate", "extend",
                       "splice", "version-swap", "body-swap", "delete", "insert", "zero",
                       "random")

#: Every kind of request, per phase (their index is what a chunk returns).
PHASE_KINDS: Final[dict[str, tuple[str, ...]]] = {
    "aws-kms": AWS_KINDS, "secrets": AWS_KINDS, "alibaba": ALI_KINDS,
    "kms-instance": PB_KINDS, CIPHERTEXTS: tuple(dict.fromkeys(CT_MUTATIONS))}

_PAIRS: dict[int, list[tuple[str, str]]] = {}


def _pairs(schema: dict[str, dict[str, Shape]]) -> list[tuple[str, str]]:
    """Every (operation, input field) of a model, in a fixed order."""
    got = _PAIRS.get(id(schema))
    if got is None:
        got = _PAIRS[id(schema)] = [(op, m) for op in sorted(schema) for m in sorted(schema[op])]
    return got


def _acs_arn(c: Context) -> str:
    return f"acs:kms:{REGION}:{c.account}:key/{c.key_names[0]}"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _latin(text: str) -> bytes:
    return text.encode("latin-1", "replace").replace(b"\r", b" ").replace(b"\n", b" ")


def _split(req: bytes) -> tuple[bytes, bytes]:
    i = req.index(b"\r\n\r\n")
    return req[:i], req[i + 4:]


def _get(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return b""


def _set(head: bytes, name: bytes, value: bytes | None) -> bytes:
    """``head`` with header ``name`` set to ``value`` (None: removed)."""
    lines = head.split(b"\r\n")
    out = [lines[0]]
    done = False
    for line in lines[1:]:
        if line.partition(b":")[0].strip().lower() == name:
            if value is not None and not done:
                out.append(line.partition(b":")[0] + b": " + value)
                done = True
            continue
        out.append(line)
    if value is not None and not done:
        out.append(name + b": " + value)
    return b"\r\n".join(out)


def _chunked(req: bytes) -> bytes:
    """``req`` with its body sent chunked, without a Content-Length."""
    head, body = _split(req)
    head = _set(head, b"content-length", None) + b"\r\nTransfer-Encoding: chunked"
    chunks = [b"%x\r\n%s\r\n" % (len(body[k:k + 65536]), body[k:k + 65536])
              for k in range(0, len(body), 65536)]
    return head + b"\r\n\r\n" + b"".join(chunks) + b"0\r\n\r\n"


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _pb_field(number: int, wire: int, r: random.Random) -> bytes:
    if wire == 0:
        return _tag(number, 0) + _varint(r.choice((0, 1, 2**63, 2**64 - 1)))
    if wire == 1:
        return _tag(number, 1) + r.randbytes(8)
    if wire == 5:
        return _tag(number, 5) + r.randbytes(4)
    data = r.randbytes(r.choice((0, 1, 16)))
    return _tag(number, 2) + _varint(len(data)) + data


def _shuffle_in(r: random.Random, good: bytes, bad: bytes) -> bytes:
    return bad + good if r.random() < 0.5 else good + bad


# --- making chunks (in the signing processes) ----------------------------------------------

_CTX: Context | None = None


def _init(ctx: Context) -> None:
    global _CTX
    _CTX = ctx


def make_chunk(phase: str, start: int, count: int, seed: int) -> tuple[list[bytes], bytes]:
    """Requests ``start .. start+count`` of ``phase`` and their kinds (indexes of
    :data:`PHASE_KINDS`), deterministic for ``seed``."""
    assert _CTX is not None
    gen = Gen(_CTX, int.from_bytes(hashlib.sha256(f"{seed}/{phase}/{start}".encode())
                                   .digest()[:8], "big"))
    kinds = PHASE_KINDS[phase]
    index = {k: n for n, k in enumerate(kinds)}
    maker: Callable[[int], tuple[bytes, str]]
    if phase in ("aws-kms", "secrets"):
        maker = lambda i: gen.aws(phase, i)  # noqa: E731
    elif phase == "alibaba":
        maker = gen.alibaba
    elif phase == "kms-instance":
        maker = gen.kms_instance
    else:
        maker = gen.ciphertext_request
    reqs, marks = [], array.array("B")
    for i in range(start, start + count):
        req, kind = maker(i)
        reqs.append(req)
        marks.append(index[kind])
    return reqs, marks.tobytes()


class Maker:
    """Makes batches of requests: in ``processes`` child processes (spawned), or here (0)."""

    def __init__(self, ctx: Context, processes: int, seed: int) -> None:
        self.seed = seed
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        from benchmarks import fuzz as this  # the module's name in the children

        self.make = this.make_chunk
        this._init(ctx)
        if processes > 0:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=this._init, initargs=(ctx,))

    def batch(self, phase: str, start: int, count: int) -> tuple[list[bytes], bytes]:
        spans = [(s, min(CHUNK, start + count - s)) for s in range(start, start + count, CHUNK)]
        if self.pool is None:
            parts = [self.make(phase, s, n, self.seed) for s, n in spans]
        else:
            futures = [self.pool.submit(self.make, phase, s, n, self.seed) for s, n in spans]
            parts = [f.result() for f in futures]
        reqs: list[bytes] = []
        kinds = b""
        for r, k in parts:
            reqs += r
            kinds += k
        return reqs, kinds

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


# --- sending -------------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection; answers are read by their Content-Length. An answer that
    arrived before the connection was closed (or reset) counts as an answer."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiting: asyncio.Future[tuple[bytes, bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.answers_left = 0  # a replayed (doubled) request has two answers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._check()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._check()
        w = self.waiting
        if w is not None and not w.done():
            w.set_exception(ConnectionError(f"closed before the answer ({exc!r})"))

    def _check(self) -> None:
        w = self.waiting
        if w is None or w.done():
            return
        i = self.buf.find(b"\r\n\r\n")
        if i < 0:
            return
        head = bytes(self.buf[:i + 4])
        length, _ = _framing(head)
        end = i + 4 + max(0, length)
        if len(self.buf) < end:
            return
        body = bytes(self.buf[i + 4:end])
        del self.buf[:end]
        w.set_result((head, body))

    def expect(self) -> asyncio.Future[tuple[bytes, bytes]]:
        self.waiting = asyncio.get_running_loop().create_future()
        self._check()
        return self.waiting


@dataclass
class Sent:
    """What a batch got back (one entry per request)."""

    status: array.array[int] = field(default_factory=lambda: array.array("H"))
    seconds: array.array[float] = field(default_factory=lambda: array.array("d"))
    untyped: list[int] = field(default_factory=list)  # request indexes
    codes: Counter[str] = field(default_factory=Counter)  # error codes of 4xx/5xx answers
    samples: list[tuple[int, int, str]] = field(default_factory=list)  # (index, status, code)
    connects: int = 0
    connect_max: float = 0.0


def error_code(body: bytes) -> str:
    """The error code of an answer: a JSON ``__type`` or ``Code``, or the protobuf Error's
    ``ErrorCode``; "" if it has none."""
    if body[:1] == b"{":
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return ""
        if isinstance(doc, dict):
            code = doc.get("__type") or doc.get("Code")
            return code if isinstance(code, str) else ""
        return ""
    try:
        code = pw.decode(body, ERROR).get("ErrorCode", "")
    except pw.ProtoError:
        return ""
    return code if isinstance(code, str) else ""


async def _send_all(port: int, ctx: ssl.SSLContext | None, reqs: Sequence[bytes],
                    answers: Sequence[int], conns: int) -> Sent:
    loop = asyncio.get_running_loop()
    out = Sent()
    n = len(reqs)
    out.status.extend([0] * n)
    out.seconds.extend([0.0] * n)
    nxt = 0

    async def connect() -> _Conn:
        t0 = time.perf_counter()
        _, proto = await asyncio.wait_for(
            loop.create_connection(_Conn, HOST, port, ssl=ctx), TIMEOUT)
        out.connects += 1
        out.connect_max = max(out.connect_max, time.perf_counter() - t0)
        return proto

    async def one_connection() -> None:
        nonlocal nxt
        conn: _Conn | None = None
        while nxt < n:
            i = nxt
            nxt += 1
            try:
                if conn is None or conn.closed:
                    conn = await connect()
                assert conn.transport is not None
                t0 = time.perf_counter()
                conn.transport.write(reqs[i])
                head = body = b""
                for _ in range(answers[i]):  # a replayed (pipelined) request: two answers,
                    if head and _framing(head)[1]:  # unless the first closed the connection
                        break
                    head, body = await asyncio.wait_for(conn.expect(), TIMEOUT)
                    status = int(head[9:12])
                    if status >= 400:
                        code = error_code(body)
                        out.codes[code or f"<{status} untyped>"] += 1
                        if not code:
                            out.untyped.append(i)
                        if status >= 500 and len(out.samples) < 20:
                            out.samples.append((i, status, code))
                out.seconds[i] = time.perf_counter() - t0
                out.status[i] = int(head[9:12])
                if _framing(head)[1]:
                    conn.transport.close()
                    conn = None
            except (OSError, ConnectionError, TimeoutError, ValueError) as exc:
                out.status[i] = 0  # no answer
                out.seconds[i] = TIMEOUT if isinstance(exc, TimeoutError) else 0.0
                if len(out.samples) < 20:
                    out.samples.append((i, 0, type(exc).__name__))
                if conn is not None and conn.transport is not None:
                    conn.transport.abort()
                conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(one_connection() for _ in range(conns)))
    return out


def send(port: int, ctx: ssl.SSLContext | None, reqs: Sequence[bytes], answers: Sequence[int],
         conns: int) -> Sent:
    import uvloop

    return uvloop.run(_send_all(port, ctx, reqs, answers, conns))


# --- the phases ----------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    requests: int = 0
    answers: int = 0  # requests answered (a replayed request counts once)
    classes: dict[str, int] = field(default_factory=dict)  # "2xx", "4xx", "5xx", "none"
    statuses: dict[str, int] = field(default_factory=dict)
    five_xx: int = 0
    unanswered: int = 0  # connection closed/reset before the answer, or TIMEOUT passed
    untyped: int = 0
    decrypted: int = 0  # mutated ciphertexts answered 2xx (ciphertexts only)
    slow: int = 0  # answers in ANSWER_BAR or more
    max_ms: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    make_seconds: float = 0.0
    send_seconds: float = 0.0
    req_per_s: float = 0.0
    connects: int = 0
    connect_max_ms: float = 0.0
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> status -> n
    codes: dict[str, int] = field(default_factory=dict)  # the 40 most frequent error codes
    slowest: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)  # 5xx/unanswered/untyped

    @property
    def seconds(self) -> float:
        return self.make_seconds + self.send_seconds


def run_phase(name: str, n: int, maker: Maker, port: int, tls: ssl.SSLContext | None,
              conns: int) -> Phase:
    import numpy as np

    ph = Phase(name)
    kinds_of = PHASE_KINDS[name]
    lat: list[float] = []
    statuses: Counter[int] = Counter()
    kinds: dict[str, Counter[str]] = {}
    codes: Counter[str] = Counter()
    slowest: list[tuple[float, str, int]] = []
    for start in range(0, n, BATCH):
        count = min(BATCH, n - start)
        t0 = time.monotonic()
        reqs, marks = maker.batch(name, start, count)
        t1 = time.monotonic()
        answers = [2 if kinds_of[m] == "replay" else 1 for m in marks]
        got = send(port, tls, reqs, answers, conns)
        t2 = time.monotonic()
        ph.make_seconds += t1 - t0
        ph.send_seconds += t2 - t1
        ph.connects += got.connects
        ph.connect_max_ms = max(ph.connect_max_ms, got.connect_max * 1e3)
        codes.update(got.codes)
        untyped = set(got.untyped)
        for i in range(count):
            status, secs, kind = got.status[i], got.seconds[i], kinds_of[marks[i]]
            statuses[status] += 1
            kinds.setdefault(kind, Counter())[f"{status // 100}xx" if status else "none"] += 1
            if status:
                lat.append(secs)
                slowest.append((secs, kind, status))
            failed = status == 0 or status >= 500 or i in untyped or (
                name == CIPHERTEXTS and 200 <= status < 300)
            if failed and len(ph.failures) < 30:
                code = next((c for j, s, c in got.samples if j == i), "")
                ph.failures.append({"kind": kind, "status": status, "code": code,
                                    "request_head": _head_text(reqs[i])})
        slowest = sorted(slowest, reverse=True)[:10]
        ph.untyped += len(untyped)
    ph.requests = n
    ph.statuses = {str(k): v for k, v in sorted(statuses.items())}
    for status, k in statuses.items():
        cls = f"{status // 100}xx" if status else "none"
        ph.classes[cls] = ph.classes.get(cls, 0) + k
    ph.five_xx = sum(v for s, v in statuses.items() if s >= 500)
    ph.unanswered = statuses.get(0, 0)
    ph.answers = n - ph.unanswered
    if name == CIPHERTEXTS:
        ph.decrypted = sum(v for s, v in statuses.items() if 200 <= s < 300)
    if lat:
        a = np.asarray(lat)
        ph.max_ms = float(a.max() * 1e3)
        ph.p50_ms = float(np.percentile(a, 50) * 1e3)
        ph.p99_ms = float(np.percentile(a, 99) * 1e3)
        ph.slow = int((a >= ANSWER_BAR).sum())
    ph.req_per_s = n / ph.send_seconds if ph.send_seconds else 0.0
    ph.kinds = {k: dict(sorted(v.items())) for k, v in sorted(kinds.items())}
    ph.codes = dict(codes.most_common(40))
    ph.slowest = [{"ms": round(s * 1e3, 2), "kind": k, "status": st} for s, k, st in slowest]
    return ph


def _head_text(req: bytes) -> str:
    """A request's first lines, for a failure report (the Authorization value cut)."""
    head = req[:req.find(b"\r\n\r\n")] if b"\r\n\r\n" in req else req[:300]
    lines = []
    for line in head.split(b"\r\n")[:12]:
        if line.lower().startswith(b"authorization"):
            line = line[:40] + b"..."
        lines.append(line[:200].decode("latin-1"))
    return "\n".join(lines)


# --- the server and what it holds ----------------------------------------------------------


@dataclass
class Target:
    """The server under test and its callers."""

    server: Server
    instance_port: int
    ak: str
    sk: str
    client_key: instance_load.ClientKey
    kms: Any
    sm: Any
    key: dict[str, Any]
    sign_key: str
    secret: dict[str, Any]
    reference: bytes  # a ciphertext whose plaintext is checked

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.client_key.ca_file))


def stored(kms: Any, sm: Any) -> tuple[dict[str, Any], str, dict[str, Any]]:
    key = kms.create_key(Description="fuzz reference",
                         Tags=[{"TagKey": "k", "TagValue": "v"}])["KeyMetadata"]
    kms.create_alias(AliasName="alias/fuzz-ref", TargetKeyId=key["KeyId"])
    sign_key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    secret = sm.create_secret(Name="fuzz-ref", SecretString="fuzz-ref-value")
    return key, sign_key["KeyId"], secret


def snapshot(t: Target) -> dict[str, Any]:
    """What the server holds of the stored objects (and how many keys and secrets)."""
    kms, sm = t.kms, t.sm
    out: dict[str, Any] = {}
    for k in (t.key["KeyId"], t.sign_key):
        out[k] = kms.describe_key(KeyId=k)["KeyMetadata"]
        out[k + "/tags"] = kms.list_resource_tags(KeyId=k)["Tags"]
        out[k + "/policy"] = kms.get_key_policy(KeyId=k, PolicyName="default")["Policy"]
        out[k + "/rotation"] = kms.get_key_rotation_status(KeyId=k)["KeyRotationEnabled"]
        out[k + "/versions"] = kms.list_key_rotations(KeyId=k)["Rotations"] \
            if k == t.key["KeyId"] else None
    out["aliases"] = sorted((a["AliasName"], a.get("TargetKeyId"))
                            for a in kms.list_aliases(Limit=1000)["Aliases"])
    out["keys"] = len(kms.list_keys(Limit=1000)["Keys"])
    secret = sm.describe_secret(SecretId="fuzz-ref")
    secret.pop("ResponseMetadata", None)
    out["secret"] = secret
    out["secret/value"] = sm.get_secret_value(SecretId="fuzz-ref")["SecretString"]
    out["secrets"] = len(sm.list_secrets(MaxResults=100)["SecretList"])
    out["decrypt"] = kms.decrypt(CiphertextBlob=t.reference)["Plaintext"]
    return out


def make_ciphertexts(kms: Any, key_id: str) -> list[tuple[bytes, tuple[tuple[str, str], ...]]]:
    out = []
    for n, ctx in ((1, ()), (16, ()), (100, (("purpose", "fuzz"),)), (512, ()),
                   (4096, (("a", "b"), ("tenant", "42"))), (32, (("k", "\u00e9"),))):
        kw: dict[str, Any] = {"EncryptionContext": dict(ctx)} if ctx else {}
        blob = kms.encrypt(KeyId=key_id, Plaintext=os.urandom(n), **kw)["CiphertextBlob"]
        out.append((blob, ctx))
    return out


def worker_pids(srv: Server) -> list[int]:
    return sorted(p for p in _tree(srv.proc.pid) if p != srv.proc.pid)


def health(srv: Server) -> int:
    conn = http.client.HTTPConnection(HOST, srv.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def valid_requests(t: Target, ctx: Context) -> dict[str, bool]:
    """One valid request on each front end after the run: each must succeed."""
    out: dict[str, bool] = {}
    try:
        out["aws-kms"] = t.kms.decrypt(CiphertextBlob=t.reference)["Plaintext"] == b"fuzz ref"
    except Exception:  # noqa: BLE001 - a failure to report
        out["aws-kms"] = False
    try:
        out["secrets"] = t.sm.get_secret_value(SecretId="fuzz-ref")["SecretString"] == \
            "fuzz-ref-value"
    except Exception:  # noqa: BLE001
        out["secrets"] = False
    from benchmarks.server import raw_call

    try:
        req = sign_acs3(t.ak, t.sk, t.server.port, "DescribeKey",
                        [{"KeyId": t.key["KeyId"]}])[0]
        status, body = raw_call(t.server.port, req)
        out["alibaba"] = status == 200 and t.key["KeyId"].encode() in body
    except (OSError, ValueError):
        out["alibaba"] = False
    try:
        instance_load.check(t.client_key, t.instance_port, t.key["KeyId"], 2)
        out["kms-instance"] = True
    except (OSError, RuntimeError, http.client.HTTPException):
        out["kms-instance"] = False
    return out


@contextlib.contextmanager
def serving(work: Path, notes: list[str]) -> Iterator[Target]:
    """A 2-worker server with its KMS-instance port, its stored objects and callers."""
    from benchmarks.server import free_port

    subprocess_tokens()
    cfg = write_config(work, TOKENS, INSTANCE, token_dir=TOKEN_DIR, label=LABEL)
    ak, sk = create_credentials(cfg, INSTANCE)
    instance_port = free_port()
    srv = start_ready("hsmpool", hsmpool_argv(cfg, WORKERS, instance_port), "/metrics",
                      WORKERS, work, notes)
    try:
        client_key = instance_load.make_client_key(hsmpool_bin(), cfg, INSTANCE, work / "aap")
        kms = boto_client(srv.port, ak, sk)
        sm = boto_client(srv.port, ak, sk, "secretsmanager")
        key, sign_key, secret = stored(kms, sm)
        reference = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"fuzz ref")["CiphertextBlob"]
        yield Target(srv, instance_port, ak, sk, client_key, kms, sm, key, sign_key, secret,
                     reference)
    finally:
        srv.stop()


def subprocess_tokens() -> None:
    import subprocess

    subprocess.run(["bash", str(ROOT / "softhsm-config" / "make-tokens.sh"), str(TOKEN_DIR),
                    str(len(TOKENS)), LABEL], check=True)


def context(t: Target) -> Context:
    from cryptography.hazmat.primitives import serialization

    der = t.client_key.private_key.private_bytes(serialization.Encoding.DER,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption())
    key = t.key
    account = key["Arn"].split(":")[4]
    alias_arn = f"arn:aws:kms:{REGION}:{account}:alias/fuzz-ref"
    return Context(
        port=t.server.port, instance_port=t.instance_port, ak=t.ak, sk=t.sk,
        client_key_id=t.client_key.client_key_id, client_key_der=der,
        key_names=(key["KeyId"], key["Arn"], "alias/fuzz-ref", alias_arn),
        sign_key_id=t.sign_key, secret_names=("fuzz-ref", t.secret["ARN"]), account=account,
        ciphertexts=tuple(make_ciphertexts(t.kms, key["KeyId"])),
        kms_schema=aws_schema("kms"), sm_schema=aws_schema("secretsmanager"))


# --- the run -------------------------------------------------------------------------------


@dataclass
class Options:
    requests: int = 100_000
    ciphertexts: int = 100_000
    front_ends: tuple[str, ...] = FRONT_ENDS
    connections: int = 8
    sign_processes: int = 2
    seed: int = 0
    keep: bool = False
    work_parent: Path = ROOT / "var"


def run(opts: Options) -> dict[str, Any]:
    """Run the fuzzing and return its result document (``bars`` says what passed)."""
    if set(ALI_ACTION_PARAMS) != set(ali.OPERATIONS):
        raise RuntimeError("ALI_ACTION_PARAMS is not in step with kms.api.alibaba.OPERATIONS: "
                           f"{sorted(set(ALI_ACTION_PARAMS) ^ set(ali.OPERATIONS))}")
    t_start = time.monotonic()
    opts.work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fuzz-", dir=opts.work_parent))
    notes: list[str] = []
    phases: list[Phase] = []
    checks: dict[str, Any] = {}
    maker: Maker | None = None
    try:
        with serving(work, notes) as t:
            ctx = context(t)
            before = snapshot(t)
            pids = worker_pids(t.server)
            maker = Maker(ctx, opts.sign_processes, opts.seed)
            t_setup = time.monotonic() - t_start
            print(f"setup {t_setup:.1f} s (work dir {work}); {opts.connections} connections, "
                  f"{opts.sign_processes} signing processes", flush=True)
            plan = [(fe, opts.requests) for fe in opts.front_ends]
            if opts.ciphertexts:
                plan.append((CIPHERTEXTS, opts.ciphertexts))
            for name, n in plan:
                port = t.instance_port if name == "kms-instance" else t.server.port
                tls = t.tls() if name == "kms-instance" else None
                ph = run_phase(name, n, maker, port, tls, opts.connections)
                phases.append(ph)
                print(f"  {name:<13} {ph.requests:>7,} requests in {ph.seconds:6.1f} s "
                      f"(made {ph.make_seconds:.1f} s, sent {ph.send_seconds:.1f} s, "
                      f"{ph.req_per_s:,.0f}/s): {ph.classes}  max {ph.max_ms:.1f} ms  "
                      f"p99 {ph.p99_ms:.1f} ms", flush=True)
            alive = t.server.proc.poll() is None
            checks = {
                "server_running": alive,
                "healthz": health(t.server) if alive else 0,
                "workers_before": pids, "workers_after": worker_pids(t.server),
                "valid_requests": valid_requests(t, ctx) if alive else {},
            }
            after = snapshot(t) if alive else {}
            checks["state_unchanged"] = after == before
            if after != before:
                checks["state_diff"] = sorted(k for k in set(before) | set(after)
                                              if before.get(k) != after.get(k))
        log = t.server.log.read_text(errors="replace")
        checks["log_tracebacks"] = log.count("Traceback")
        checks["log_internal_errors"] = log.count("internal error")
        checks["log_lines"] = log.count("\n")
        if checks["log_tracebacks"]:
            i = log.index("Traceback")
            checks["log_first_traceback"] = log[max(0, i - 300):i + 3000]
    finally:
        if maker is not None:
            maker.close()
        if opts.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    bars = judge(phases, checks)
    total = time.monotonic() - t_start
    doc = {"meta": {**meta_head(), "requests_per_front_end": opts.requests,
                    "ciphertexts": opts.ciphertexts, "front_ends": list(opts.front_ends),
                    "connections": opts.connections, "sign_processes": opts.sign_processes,
                    "seed": opts.seed, "workers": WORKERS, "max_body": MAX_BODY,
                    "answer_bar_s": ANSWER_BAR, "timeout_s": TIMEOUT,
                    "setup_seconds": t_setup, "total_seconds": total, "notes": notes},
           "phases": [asdict(p) | {"seconds": p.seconds} for p in phases], "checks": checks,
           "bars": bars, "passed": all(b["ok"] for b in bars)}
    return doc


def judge(phases: Sequence[Phase], checks: dict[str, Any]) -> list[dict[str, Any]]:
    bars: list[dict[str, Any]] = []

    def bar(name: str, ok: bool, value: Any) -> None:
        bars.append({"bar": name, "ok": bool(ok), "value": value})

    for p in phases:
        bar(f"{p.name}: no 5xx", p.five_xx == 0, p.five_xx)
        bar(f"{p.name}: every request answered", p.unanswered == 0, p.unanswered)
        bar(f"{p.name}: no answer in {ANSWER_BAR:g} s or more", p.slow == 0 and p.max_ms <
            ANSWER_BAR * 1e3, round(p.max_ms, 1))
        bar(f"{p.name}: every error typed", p.untyped == 0, p.untyped)
        if p.name == CIPHERTEXTS:
            bar(f"{p.name}: no mutated ciphertext decrypted", p.decrypted == 0, p.decrypted)
    bar("server still running", checks.get("server_running", False),
        checks.get("server_running"))
    bar("/healthz 200 after the run", checks.get("healthz") == 200, checks.get("healthz"))
    bar("same worker processes (none crashed)",
        checks.get("workers_before") == checks.get("workers_after")
        and len(checks.get("workers_before") or []) == WORKERS,
        checks.get("workers_after"))
    valid = checks.get("valid_requests", {})
    bar("a valid request on each front end succeeds after the run",
        bool(valid) and all(valid.values()), valid)
    bar("no traceback in the server log", checks.get("log_tracebacks", 1) == 0,
        checks.get("log_tracebacks"))
    bar("stored objects unchanged", checks.get("state_unchanged", False),
        checks.get("state_diff", []))
    return bars


def report(doc: dict[str, Any]) -> str:
    head = (f"{'phase':<13} | {'requests':>8} {'2xx':>6} {'4xx':>7} {'5xx':>4} {'none':>4} "
            f"{'untyped':>7} | {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} | {'made s':>6} "
            f"{'sent s':>6} {'req/s':>6}")
    out = [head, "-" * len(head)]
    for p in doc["phases"]:
        c = p["classes"]
        out.append(f"{p['name']:<13} | {p['requests']:>8,} {c.get('2xx', 0):>6,} "
                   f"{c.get('4xx', 0):>7,} {p['five_xx']:>4} {p['unanswered']:>4} "
                   f"{p['untyped']:>7} | {p['p50_ms']:>7.2f} {p['p99_ms']:>7.2f} "
                   f"{p['max_ms']:>7.1f} | {p['make_seconds']:>6.1f} {p['send_seconds']:>6.1f} "
                   f"{p['req_per_s']:>6,.0f}")
    out.append("")
    for b in doc["bars"]:
        out.append(f"bar: {b['bar']:<58} {'PASS' if b['ok'] else 'FAIL'}  ({b['value']})")
    for p in doc["phases"]:
        for f in p["failures"][:5]:
            out.append(f"  {p['name']} {f['kind']}: {f['status']} {f['code']!r}\n    "
                       + f["request_head"].replace("\n", "\n    "))
    if doc["checks"].get("log_first_traceback"):
        out.append("first traceback in the server log:\n" + doc["checks"]["log_first_traceback"])
    out.append(f"\nsetup {doc['meta']['setup_seconds']:.1f} s, total "
               f"{doc['meta']['total_seconds']:.1f} s")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000, help="per front end (100000)")
    ap.add_argument("--ciphertexts", type=int, default=100_000,
                    help="mutated ciphertexts sent to Decrypt (100000)")
    ap.add_argument("--front-ends", nargs="+", choices=FRONT_ENDS, default=list(FRONT_ENDS))
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--sign-processes", type=int, default=2,
                    help="child processes that make and sign the requests (0: this one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"(default {DEFAULT_JSON})")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (log, store, audit)")
    args = ap.parse_args(argv)
    if not 0 <= args.requests <= 2_000_000 or not 0 <= args.ciphertexts <= 2_000_000 \
            or not 1 <= args.connections <= 256 or not 0 <= args.sign_processes <= 16:
        ap.error("--requests/--ciphertexts 0..2000000, --connections 1..256, "
                 "--sign-processes 0..16")
    doc = run(Options(args.requests, args.ciphertexts, tuple(args.front_ends),
                      args.connections, args.sign_processes, args.seed, args.keep))
    print()
    print(report(doc))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
