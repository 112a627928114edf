"""SIGKILL at random moments under a mixed KMS and Secrets Manager load loses nothing that
was acknowledged.

A real two-worker ``hsmpool serve`` (real SoftHSM2 tokens, one SQLite store and one audit
directory kept across restarts) runs under a concurrent boto3 load (no retries: every
answer is seen) of CreateKey (symmetric, now and then ECC P-256), Encrypt, RotateKeyOnDemand,
CreateAlias, UpdateAlias, DisableKey/EnableKey, TagResource, CreateSecret, PutSecretValue
and RotateSecret (generic rotator). At a random moment its whole process group (the
supervisor and both workers) gets SIGKILL; it is restarted on the same store, ten times.
Then, with the server up again:

* every acknowledged key exists, in the state, with the tag, last acknowledged;
* every acknowledged rotation made a version (ListKeyRotations);
* every acknowledged alias points where it was last acknowledged to;
* every acknowledged secret version returns its value, every acknowledged rotation's
  version exists, AWSCURRENT is the last acknowledged version and the stages are
  consistent (one AWSCURRENT, at most one AWSPREVIOUS and AWSPENDING); a rotation cut off
  by a kill resumes and finishes;
* every acknowledged ciphertext decrypts (with its context) to its plaintext;
* every acknowledged change of state has its audit record (action, key or secret and
  version, "ok"), and ``hsmpool audit verify`` with the configuration (hash chains, head
  MACs, the store's checkpoints of every segment) passes.

Each resource (key, alias, secret) is used by one load thread only, so "last acknowledged"
is well defined. A request cut off by the kill is *in doubt*: it may or may not have taken
effect, so its outcome is added to what the checks accept until a later acknowledged change
of the same resource settles it. A request that never reached the server (connection
refused) and a 4xx answer changed nothing.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
)

from tests.server.conftest import (
    HSMPOOL,
    Server,
    create_credential,
    kill_group,
    run_server,
    write_server_config,
)

CRASHES = 10
THREADS = 4
LOAD_SECONDS = (1.0, 2.0)  # load before each kill: uniform in this range
SEED = 20261210
# Versions per secret stay well below 100, beyond which deprecated versions are pruned.
MAX_SECRET_VERSIONS = 40
# A 4xx the load may meet (a key left disabled by a request in doubt, ...): anything else
# is a bug of the test or of the server.
EXPECTED_REFUSALS = {"DisabledException", "KMSInvalidStateException"}
ENABLED, DISABLED = "Enabled", "Disabled"
# Outcomes of one request.
OK, NO, DOUBT = "ok", "no", "doubt"


@dataclass
class Key:
    key_id: str
    symmetric: bool
    states: set[str] = field(default_factory=lambda: {ENABLED})  # what the check accepts
    tags: set[str | None] = field(default_factory=lambda: {None})  # tag "n"; None: untagged
    rotations: int = 0  # acknowledged
    rotations_in_doubt: int = 0


@dataclass
class Alias:
    name: str
    targets: set[str | None]  # None: the alias may not exist


@dataclass
class Secret:
    name: str
    arn: str
    values: dict[str, str]  # acknowledged version (CreateSecret, PutSecretValue) -> value
    rotated: list[str] = field(default_factory=list)  # versions of acknowledged rotations
    current: set[str] = field(default_factory=set)  # versions AWSCURRENT may be on
    pending: set[str] = field(default_factory=set)  # of rotations in doubt, not yet settled

    def versions(self) -> int:
        return len(self.values) + len(self.rotated) + len(self.pending)


@dataclass
class Owned:
    """One load thread's resources (no other thread touches them)."""

    keys: list[Key] = field(default_factory=list)
    aliases: list[Alias] = field(default_factory=list)
    secrets: list[Secret] = field(default_factory=list)


@dataclass
class Model:
    """Everything acknowledged, across all runs."""

    owned: list[Owned] = field(default_factory=lambda: [Owned() for _ in range(THREADS)])
    ciphertexts: list[tuple[bytes, bytes, dict[str, str]]] = field(default_factory=list)
    acks: list[tuple[str, str, str | None]] = field(default_factory=list)  # audit expected
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (op, outcome)
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)  # (op, error code)
    resumed: int = 0  # acknowledged rotations that finished one cut off by a kill
    # resource -> what was asked of it, and the outcome (shown with a problem)
    journal: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def client(server: Server, service: str, read_timeout: float) -> Any:
    """A boto3 client that sends each request once (a request cut off by the kill and sent
    again would be answered "connection refused", hiding that the first one arrived)."""
    return server.client(server.creds["admin"], service=service, read_timeout=read_timeout,
                         connect_timeout=2, max_pool_connections=THREADS + 2)


def attempt(model: Model, op: str, resource: str | None, fn: Callable[[], Any],
            note: str = "") -> tuple[str, Any]:
    """Run one request: (OK, response), (NO, None) if it changed nothing (never reached
    the server, or a 4xx answer), (DOUBT, None) if it was cut off (or a 5xx)."""
    t = time.time()
    why = ""
    try:
        out: tuple[str, Any] = (OK, fn())
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        # No connection (the server is down): the request was not sent (the client
        # sends a request once: a broken connection is not replaced and written again).
        out, why = (NO, None), type(exc).__name__
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        why = exc.response.get("Error", {}).get("Code", "?")
        if 400 <= status < 500:
            with model.lock:
                model.refusals[(op, why)] += 1
            out = (NO, None)
        else:
            out = (DOUBT, None)
    except BotoCoreError as exc:
        out, why = (DOUBT, None), type(exc).__name__  # the connection broke: the kill
    with model.lock:
        model.outcomes[(op, out[0])] += 1
        if resource is not None:
            model.journal.setdefault(resource, []).append(
                f"{t:.3f} {op} {note} -> {out[0]} {why}".rstrip())
    return out


class Loader:
    """The load of one run (between a start and its kill)."""

    def __init__(self, server: Server, model: Model, run: int) -> None:
        # read_timeout is never reached: every run is killed within LOAD_SECONDS, which
        # breaks the connections of the requests in flight.
        self.kms = client(server, "kms", read_timeout=10)
        self.sm = client(server, "secretsmanager", read_timeout=10)
        self.model = model
        self.run_no = run
        self.stop = threading.Event()

    def ack(self, action: str, resource: str, version: str | None = None) -> None:
        with self.model.lock:
            self.model.acks.append((action, resource, version))

    def thread(self, k: int) -> None:
        rng = random.Random(SEED * 1000 + self.run_no * THREADS + k)
        own = self.model.owned[k]
        i = 0
        while not self.stop.is_set():
            self.step(k, own, rng, f"{self.run_no}-{k}-{i}")
            i += 1

    def step(self, k: int, own: Owned, rng: random.Random, tag: str) -> None:
        sym = [key for key in own.keys if key.symmetric]
        r = rng.random()
        if not sym or r < 0.06:
            self.create_key(own, rng, tag)
        elif r < 0.22:
            self.encrypt(own, sym, rng, tag, k)
        elif r < 0.34:
            enabled = [key for key in sym if key.states == {ENABLED}]
            self.rotate_key(rng.choice(enabled or sym))
        elif r < 0.41:
            self.create_alias(own, sym, rng, tag)
        elif r < 0.50:
            self.update_alias(own, sym, rng, tag)
        elif r < 0.59:
            self.disable_or_enable(rng.choice(own.keys))
        elif r < 0.68:
            self.tag_key(rng.choice(own.keys), tag)
        else:
            fresh = [s for s in own.secrets if s.versions() < MAX_SECRET_VERSIONS]
            if len(fresh) < 4 or r < 0.69:
                self.create_secret(own, tag)
            elif r < 0.88:
                self.put_secret_value(rng.choice(fresh), tag)
            else:
                self.rotate_secret(rng.choice(fresh))

    # --- KMS ---------------------------------------------------------------------------

    def create_key(self, own: Owned, rng: random.Random, tag: str) -> None:
        symmetric = rng.random() >= 0.15
        kw: dict[str, Any] = {"Description": f"crash-loop {tag}"}
        if not symmetric:
            kw.update(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
        outcome, out = attempt(self.model, "CreateKey", None, lambda: self.kms.create_key(**kw))
        if outcome == OK:
            key_id = out["KeyMetadata"]["KeyId"]
            own.keys.append(Key(key_id, symmetric))
            self.ack("kms:CreateKey", key_id)
        # In doubt: the key may exist, but its id was never answered; nothing to check.

    def encrypt(self, own: Owned, sym: list[Key], rng: random.Random, tag: str,
                k: int) -> None:
        usable = [key for key in sym if key.states == {ENABLED}]
        if not usable:
            self.disable_or_enable(rng.choice(sym))
            return
        key = rng.choice(usable)
        key_ref = key.key_id
        by_alias = [a for a in own.aliases if a.targets == {key.key_id}]
        if by_alias and rng.random() < 0.3:
            key_ref = rng.choice(by_alias).name
        plaintext = os.urandom(rng.randint(1, 96))
        context = {"thread": str(k), "tag": tag} if rng.random() < 0.7 else {}
        outcome, out = attempt(self.model, "Encrypt", key.key_id, lambda: self.kms.encrypt(
            KeyId=key_ref, Plaintext=plaintext, EncryptionContext=context))
        if outcome == OK:
            assert out["KeyId"].endswith(key.key_id), (out["KeyId"], key.key_id)
            with self.model.lock:
                self.model.ciphertexts.append((out["CiphertextBlob"], plaintext, context))

    def rotate_key(self, key: Key) -> None:
        outcome, _ = attempt(self.model, "RotateKeyOnDemand", key.key_id,
                             lambda: self.kms.rotate_key_on_demand(KeyId=key.key_id))
        if outcome == OK:
            key.rotations += 1
            self.ack("kms:RotateKeyOnDemand", key.key_id)
        elif outcome == DOUBT:
            key.rotations_in_doubt += 1

    def create_alias(self, own: Owned, sym: list[Key], rng: random.Random, tag: str) -> None:
        name = f"alias/crash-loop/{tag}-{uuid.uuid4().hex[:6]}"
        target = rng.choice(sym).key_id
        outcome, _ = attempt(self.model, "CreateAlias", name, lambda: self.kms.create_alias(
            AliasName=name, TargetKeyId=target), target)
        if outcome == OK:
            own.aliases.append(Alias(name, {target}))
            self.ack("kms:CreateAlias", target)
        elif outcome == DOUBT:
            own.aliases.append(Alias(name, {None, target}))

    def update_alias(self, own: Owned, sym: list[Key], rng: random.Random, tag: str) -> None:
        existing = [a for a in own.aliases if None not in a.targets]
        if not existing or len(sym) < 2:
            self.create_alias(own, sym, rng, tag)
            return
        alias = rng.choice(existing)
        target = rng.choice([key.key_id for key in sym if {key.key_id} != alias.targets])
        outcome, _ = attempt(self.model, "UpdateAlias", alias.name, lambda: self.kms.update_alias(
            AliasName=alias.name, TargetKeyId=target), target)
        if outcome == OK:
            alias.targets = {target}
            self.ack("kms:UpdateAlias", target)
        elif outcome == DOUBT:
            alias.targets.add(target)

    def disable_or_enable(self, key: Key) -> None:
        if key.states == {ENABLED}:
            op, action, state = "DisableKey", self.kms.disable_key, DISABLED
        else:
            op, action, state = "EnableKey", self.kms.enable_key, ENABLED
        outcome, _ = attempt(self.model, op, key.key_id, lambda: action(KeyId=key.key_id))
        if outcome == OK:
            key.states = {state}
            self.ack(f"kms:{op}", key.key_id)
        elif outcome == DOUBT:
            key.states.add(state)

    def tag_key(self, key: Key, value: str) -> None:
        outcome, _ = attempt(self.model, "TagResource", key.key_id, lambda: self.kms.tag_resource(
            KeyId=key.key_id, Tags=[{"TagKey": "n", "TagValue": value}]), value)
        if outcome == OK:
            key.tags = {value}
            self.ack("kms:TagResource", key.key_id)
        elif outcome == DOUBT:
            key.tags.add(value)

    # --- Secrets Manager ---------------------------------------------------------------

    def create_secret(self, own: Owned, tag: str) -> None:
        name = f"crash-loop/{tag}-{uuid.uuid4().hex[:6]}"
        token, value = uuid.uuid4().hex, uuid.uuid4().hex
        outcome, out = attempt(self.model, "CreateSecret", name, lambda: self.sm.create_secret(
            Name=name, ClientRequestToken=token, SecretString=value,
            Tags=[{"Key": "hsmpool:rotator", "Value": "generic"}]))
        if outcome == OK:
            assert out["VersionId"] == token
            own.secrets.append(Secret(name, out["ARN"], {token: value}, current={token}))
            self.ack("secretsmanager:CreateSecret", out["ARN"], token)

    def put_secret_value(self, secret: Secret, tag: str) -> None:
        token, value = uuid.uuid4().hex, uuid.uuid4().hex
        outcome, out = attempt(
            self.model, "PutSecretValue", secret.name, lambda: self.sm.put_secret_value(
                SecretId=secret.name, ClientRequestToken=token, SecretString=value), token)
        if outcome == OK:
            assert out["VersionId"] == token
            secret.values[token] = value
            secret.current = {token}
            self.ack("secretsmanager:PutSecretValue", secret.arn, token)
        elif outcome == DOUBT:
            secret.current.add(token)

    def rotate_secret(self, secret: Secret) -> None:
        token = uuid.uuid4().hex
        outcome, out = attempt(
            self.model, "RotateSecret", secret.name, lambda: self.sm.rotate_secret(
                SecretId=secret.name, ClientRequestToken=token), token)
        if outcome == OK:
            # A rotation cut off earlier is resumed: its version, not this token, is made
            # current.
            version = out["VersionId"]
            assert version == token or version in secret.pending, version
            if version != token:
                with self.model.lock:
                    self.model.resumed += 1
            secret.rotated.append(version)
            secret.current = {version}
            secret.pending.clear()
            self.ack("secretsmanager:RotateSecret", secret.arn, version)
        elif outcome == DOUBT:
            # It may have made AWSPENDING (this token's, or finished the one pending).
            secret.pending.add(token)
            secret.current |= secret.pending


# --- the checks ---------------------------------------------------------------------------


def check_keys(kms: Any, keys: list[Key], problems: list[str]) -> None:
    def one(key: Key) -> list[str]:
        out: list[str] = []
        try:
            meta = kms.describe_key(KeyId=key.key_id)["KeyMetadata"]
        except ClientError as exc:
            return [f"key {key.key_id}: {exc.response['Error']['Code']} (acknowledged)"]
        if meta["KeyState"] not in key.states:
            out.append(f"key {key.key_id} is {meta['KeyState']}, acknowledged {key.states}")
        want_spec = "SYMMETRIC_DEFAULT" if key.symmetric else "ECC_NIST_P256"
        if meta["KeySpec"] != want_spec:
            out.append(f"key {key.key_id} is {meta['KeySpec']}, created {want_spec}")
        if key.tags != {None}:
            tags = {t["TagKey"]: t["TagValue"]
                    for t in kms.list_resource_tags(KeyId=key.key_id)["Tags"]}
            if tags.get("n") not in key.tags:
                out.append(f"key {key.key_id} has tag n={tags.get('n')}, acknowledged "
                           f"{key.tags}")
        if key.symmetric:
            n = len(kms.list_key_rotations(KeyId=key.key_id)["Rotations"])
            if not key.rotations <= n <= key.rotations + key.rotations_in_doubt:
                out.append(f"key {key.key_id}: {n} rotations listed, {key.rotations} "
                           f"acknowledged, {key.rotations_in_doubt} in doubt")
        return out

    with ThreadPoolExecutor(6) as pool:
        for found in pool.map(one, keys):
            problems += found


def check_aliases(kms: Any, aliases: list[Alias], problems: list[str]) -> None:
    actual: dict[str, str] = {}
    for page in kms.get_paginator("list_aliases").paginate():
        actual.update({a["AliasName"]: a.get("TargetKeyId") for a in page["Aliases"]})
    for alias in aliases:
        if actual.get(alias.name) not in alias.targets:
            problems.append(f"alias {alias.name} points at {actual.get(alias.name)}, "
                            f"acknowledged {alias.targets}")


def check_secrets(sm: Any, secrets: list[Secret], problems: list[str]) -> int:
    """The secrets' versions and stages; then a new rotation of each. The number of
    rotations cut off by a kill (an AWSPENDING found) that the new rotation resumed."""

    def stages_of(name: str) -> dict[str, list[str]]:
        got: dict[str, list[str]] = sm.describe_secret(SecretId=name)["VersionIdsToStages"]
        return got

    def consistent(name: str, stages: dict[str, list[str]]) -> list[str]:
        labels = [s for v in stages.values() for s in v]
        if (labels.count("AWSCURRENT") != 1 or labels.count("AWSPREVIOUS") > 1
                or labels.count("AWSPENDING") > 1
                or any("AWSCURRENT" in v and "AWSPREVIOUS" in v for v in stages.values())):
            return [f"secret {name}: inconsistent stages {stages}"]
        return []

    def one(secret: Secret) -> tuple[list[str], bool]:
        out: list[str] = []
        for version, value in secret.values.items():
            try:
                got = sm.get_secret_value(SecretId=secret.name, VersionId=version)
            except ClientError as exc:
                out.append(f"secret {secret.name} version {version}: "
                           f"{exc.response['Error']['Code']} (acknowledged)")
                continue
            if got.get("SecretString") != value:  # the values are not printed
                out.append(f"secret {secret.name} version {version}: another value")
        listed: set[str] = set()
        kw: dict[str, Any] = {"SecretId": secret.name, "IncludeDeprecated": True,
                              "MaxResults": 100}
        while True:
            page = sm.list_secret_version_ids(**kw)
            listed |= {v["VersionId"] for v in page["Versions"]}
            if not page.get("NextToken"):
                break
            kw["NextToken"] = page["NextToken"]
        out += [f"secret {secret.name} rotated version {version}: not listed (acknowledged)"
                for version in secret.rotated if version not in listed]
        stages = stages_of(secret.name)
        out += consistent(secret.name, stages)
        current = [v for v, s in stages.items() if "AWSCURRENT" in s]
        if current and current[0] not in secret.current:
            out.append(f"secret {secret.name}: AWSCURRENT on {current[0]}, acknowledged "
                       f"{secret.current}")
        pending = [v for v, s in stages.items() if "AWSPENDING" in s]
        if pending and pending[0] not in secret.pending:
            out.append(f"secret {secret.name}: AWSPENDING on {pending[0]}, which no rotation "
                       "in doubt made")
        # A rotation cut off by a kill resumes; any rotation finishes.
        new = sm.rotate_secret(SecretId=secret.name)["VersionId"]
        if pending and new != pending[0]:
            out.append(f"secret {secret.name}: the rotation made {new}, not the pending "
                       f"{pending[0]}")
        after = stages_of(secret.name)
        out += consistent(secret.name, after)
        if after.get(new) != ["AWSCURRENT"]:
            out.append(f"secret {secret.name}: after a new rotation {after}")
        return out, bool(pending)

    resumed = 0
    with ThreadPoolExecutor(6) as pool:
        for found, was_pending in pool.map(one, secrets):
            problems += found
            resumed += was_pending
    return resumed


def check_ciphertexts(kms: Any, keys: list[Key],
                      ciphertexts: list[tuple[bytes, bytes, dict[str, str]]],
                      problems: list[str]) -> None:
    for key in keys:  # Decrypt needs its key enabled
        if key.symmetric and key.states != {ENABLED}:
            kms.enable_key(KeyId=key.key_id)

    def one(item: tuple[bytes, bytes, dict[str, str]]) -> str | None:
        blob, plaintext, context = item
        try:
            got = kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)["Plaintext"]
        except ClientError as exc:
            return f"a ciphertext ({len(blob)} B): {exc.response['Error']['Code']}"
        return None if got == plaintext else f"a ciphertext ({len(blob)} B) decrypts to " \
            "another plaintext"

    with ThreadPoolExecutor(6) as pool:
        problems += [p for p in pool.map(one, ciphertexts) if p is not None]


def audit_records(audit_dir: Path) -> Counter[tuple[str, str, str | None]]:
    """(action, key id or secret ARN, secret version) of every "ok" record of a change."""
    found: Counter[tuple[str, str, str | None]] = Counter()
    for db in sorted(audit_dir.glob("audit-*.db")):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT action, key_id, details FROM audit WHERE result = 'ok'"
                               " AND (action LIKE 'kms:%' OR action LIKE 'secretsmanager:%')"
                               ).fetchall()
        finally:
            con.close()
        for action, key_id, details in rows:
            if action.startswith("secretsmanager:"):
                d = json.loads(details or "{}")
                if "secret" in d:
                    found[(action, d["secret"], d.get("secret_version"))] += 1
            elif key_id is not None:
                found[(action, key_id, None)] += 1
    return found


def check_audit(audit_dir: Path, acks: list[tuple[str, str, str | None]],
                problems: list[str]) -> int:
    recorded = audit_records(audit_dir)
    acked = Counter(acks)
    missing = {a: n - recorded[a] for a, n in acked.items() if recorded[a] < n}
    if missing:
        problems.append(f"{sum(missing.values())} acknowledged changes without their audit "
                        f"record, e.g. {list(missing.items())[:5]}")
    return sum(acked.values())


def verify_audit(config: Path, audit_dir: Path, problems: list[str]) -> str:
    """``hsmpool audit verify`` with the configuration: chains, head MACs and the store's
    checkpoints of every segment."""
    out = subprocess.run([str(HSMPOOL), "--config", str(config), "audit", "verify",
                          "--dir", str(audit_dir)], capture_output=True, text=True,
                         timeout=120)
    lines = out.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    if out.returncode != 0 or " OK in " not in last:
        # A commit is atomic (records and head in one SQLite transaction): a kill leaves no
        # torn record, so no problem at all may be reported.
        found = [ln for ln in lines if ln.startswith("PROBLEM")]
        problems.append(f"audit verify exited {out.returncode}: " + "\n".join(
            [*found[:20], last, out.stderr.strip()]))
    return last


# --- the test -----------------------------------------------------------------------------


def test_sigkill_loop_loses_nothing_acknowledged(token_dir: Path, tmp_path: Path) -> None:
    t0 = time.monotonic()
    config = write_server_config(tmp_path, token_dir, {"crash": [3, 4]})
    admin = create_credential(config, "crash", "admin")
    audit_dir = tmp_path / "audit"
    rng = random.Random(SEED)
    model = Model()
    for run in range(CRASHES):
        with run_server(config, workers=2) as srv:
            srv.creds["admin"] = admin
            loader = Loader(srv, model, run)
            with ThreadPoolExecutor(THREADS) as pool:
                futures = [pool.submit(loader.thread, k) for k in range(THREADS)]
                time.sleep(rng.uniform(*LOAD_SECONDS))
                loader.stop.set()  # no new requests; those in flight are cut off:
                kill_group(srv)  # SIGKILL to the supervisor and both workers
                for f in futures:
                    f.result(timeout=60)

    keys = [key for own in model.owned for key in own.keys]
    aliases = [a for own in model.owned for a in own.aliases]
    secrets = [s for own in model.owned for s in own.secrets]
    unexpected = {c: n for c, n in model.refusals.items() if c[1] not in EXPECTED_REFUSALS}
    assert not unexpected, f"the load met unexpected errors: {unexpected}"
    doubts = sum(n for (_, o), n in model.outcomes.items() if o == DOUBT)

    t_loop = time.monotonic()
    problems: list[str] = []
    with run_server(config, workers=2) as srv:
        srv.creds["admin"] = admin
        kms = client(srv, "kms", read_timeout=30)
        sm = client(srv, "secretsmanager", read_timeout=30)
        check_keys(kms, keys, problems)
        check_aliases(kms, aliases, problems)
        resumed = check_secrets(sm, secrets, problems)
        check_ciphertexts(kms, keys, model.ciphertexts, problems)
    t_checks = time.monotonic()
    audited = check_audit(audit_dir, model.acks, problems)
    verified = verify_audit(config, audit_dir, problems)

    rotations = sum(key.rotations for key in keys)
    versions = sum(len(s.values) + len(s.rotated) for s in secrets)
    print(f"\ncrash loop: {CRASHES} kills, {len(keys)} keys "
          f"({sum(not key.symmetric for key in keys)} ECC), {rotations} rotations, "
          f"{len(aliases)} aliases, {len(model.ciphertexts)} ciphertexts, {len(secrets)} "
          f"secrets with {versions} versions ({sum(len(s.rotated) for s in secrets)} "
          f"rotated), {doubts} requests in doubt, {model.resumed + resumed} cut-off "
          f"rotations resumed ({resumed} after the loop), "
          f"{audited} audit records checked, refusals {dict(model.refusals)}; "
          f"{verified}; {t_loop - t0:.1f} s of kills, {t_checks - t_loop:.1f} s of checks, "
          f"{time.monotonic() - t0:.1f} s in all")
    for resource, history in model.journal.items():
        if any(resource in p for p in problems[:40]):
            problems.append(f"history of {resource}:\n  " + "\n  ".join(history))
    assert not problems, "\n".join(problems[:60])
    # The load really ran, with every kind of change.
    assert len(keys) >= 20 and rotations >= 10 and len(aliases) >= 10, model.outcomes
    assert len(model.ciphertexts) >= 50 and versions >= 30, model.outcomes
    assert doubts >= CRASHES // 2, model.outcomes  # the kills did cut requests off


def test_durable_actions_run_off_the_event_loop() -> None:
    """A change of state waits for the audit trail's durable commit (and the store's):
    the server must run it on its thread pool, never on the event loop."""
    from kms.api.aws_kms import BLOCKING, OPERATIONS
    from kms.service import DURABLE_ACTIONS

    served = {"kms:" + op for op in OPERATIONS}
    durable_ops = {a[len("kms:"):] for a in DURABLE_ACTIONS & served}
    assert durable_ops, DURABLE_ACTIONS
    assert durable_ops <= BLOCKING, durable_ops - BLOCKING
