"""A mixed boto3 load on a real ``hsmpool serve`` (used by the fault tests and by
``python -m benchmarks.soak``): Encrypt, Decrypt, GenerateDataKey, Sign (ECC and RSA) and
CreateKey from a few threads, every request's start, duration and outcome recorded, and
everything a request produced kept so that it can be checked afterwards (ciphertexts
decrypt, signatures verify, created keys exist).

Also the readers of ``/metrics`` the fault tests need (token states and ejection counts).
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

__all__ = ["MIX", "Keys", "Load", "Outcome", "TokenMetrics", "make_keys", "metrics",
           "percentile", "verify_products", "wait_until"]

# One round of a thread's operations (CreateKey once in ten).
MIX: tuple[str, ...] = ("Encrypt", "Decrypt", "GenerateDataKey", "SignECC", "SignRSA",
                        "Encrypt", "Decrypt", "GenerateDataKey", "SignECC", "CreateKey")


@dataclass
class Outcome:
    op: str
    start: float  # time.monotonic()
    seconds: float
    error: str | None = None
    status: int = 200
    message: str = ""


@dataclass(frozen=True)
class Keys:
    aes: str
    ecc: str
    rsa: str


def make_keys(client: Any) -> Keys:
    """An AES key, an ECC P-256 and an RSA 2048 signing key."""
    def create(**kw: Any) -> str:
        return str(client.create_key(**kw)["KeyMetadata"]["KeyId"])
    return Keys(create(),
                create(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY"),
                create(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY"))


@dataclass
class Load:
    """``threads`` threads running ``mix`` (default :data:`MIX`) on ``client`` until
    :meth:`stop`."""

    client: Any
    keys: Keys
    threads: int = 4
    mix: tuple[str, ...] = MIX
    outcomes: list[Outcome] = field(default_factory=list)
    ciphertexts: list[tuple[bytes, bytes]] = field(default_factory=list)
    signatures: list[tuple[str, bytes, bytes]] = field(default_factory=list)  # key, msg, sig
    created: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: ThreadPoolExecutor | None = None
    _futures: list[Future[None]] = field(default_factory=list)

    def one(self, i: int) -> Outcome:
        """Run operation ``i`` of the mix, record and return its outcome."""
        op = self.mix[i % len(self.mix)]
        t0 = time.monotonic()
        try:
            self._run(op, i)
            out = Outcome(op, t0, time.monotonic() - t0)
        except ClientError as exc:
            out = Outcome(op, t0, time.monotonic() - t0, exc.response["Error"]["Code"],
                          exc.response["ResponseMetadata"]["HTTPStatusCode"],
                          str(exc.response["Error"].get("Message", "")))
        except Exception as exc:  # noqa: BLE001 - a timeout, a connection error: a failure
            out = Outcome(op, t0, time.monotonic() - t0, type(exc).__name__, 0, str(exc))
        with self._lock:
            self.outcomes.append(out)
        return out

    def _run(self, op: str, i: int) -> None:
        c, k = self.client, self.keys
        if op == "Encrypt":
            pt = f"load-{i}".encode()
            ct = c.encrypt(KeyId=k.aes, Plaintext=pt)["CiphertextBlob"]
            with self._lock:
                self.ciphertexts.append((ct, pt))
        elif op == "Decrypt":
            with self._lock:
                pair = self.ciphertexts[i % len(self.ciphertexts)] if self.ciphertexts \
                    else None
            if pair is None:
                return
            got = c.decrypt(CiphertextBlob=pair[0])["Plaintext"]
            if got != pair[1]:
                raise AssertionError(f"Decrypt returned {got!r}, expected {pair[1]!r}")
        elif op == "GenerateDataKey":
            r = c.generate_data_key(KeyId=k.aes, KeySpec="AES_256")
            with self._lock:
                self.ciphertexts.append((r["CiphertextBlob"], r["Plaintext"]))
        elif op in ("SignECC", "SignRSA"):
            key = k.ecc if op == "SignECC" else k.rsa
            alg = "ECDSA_SHA_256" if op == "SignECC" else "RSASSA_PSS_SHA_256"
            msg = f"message-{i}".encode()
            sig = c.sign(KeyId=key, Message=msg, SigningAlgorithm=alg)["Signature"]
            with self._lock:
                self.signatures.append((key, msg, sig))
        elif op == "CreateKey":
            key_id = c.create_key(Description=f"load {i}")["KeyMetadata"]["KeyId"]
            with self._lock:
                self.created.append(key_id)
        else:  # pragma: no cover - MIX names only the above
            raise AssertionError(op)

    def _worker(self, k: int) -> None:
        i = k
        while not self._stop.is_set():
            self.one(i)
            i += self.threads

    def start(self) -> Load:
        for i in range(4):  # a few ciphertexts for the first Decrypts
            self.one(i * 10)
        self._pool = ThreadPoolExecutor(self.threads)
        self._futures = [self._pool.submit(self._worker, k) for k in range(self.threads)]
        return self

    def stop(self) -> None:
        self._stop.set()
        for f in self._futures:
            f.result(timeout=120)
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def between(self, t0: float, t1: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if t0 <= o.start < t1]


def verify_products(client: Any, load: Load, threads: int = 8) -> list[str]:
    """Check everything the load produced, after the run: every ciphertext decrypts to its
    plaintext, every signature verifies under the key's public key (checked locally with
    ``cryptography``), every created key is there and enabled. The problems found."""
    public: dict[str, Any] = {}
    for key in {key for key, _, _ in load.signatures}:
        der = client.get_public_key(KeyId=key)["PublicKey"]
        public[key] = serialization.load_der_public_key(der)

    def ciphertext(item: tuple[bytes, bytes]) -> str | None:
        ct, pt = item
        try:
            if client.decrypt(CiphertextBlob=ct)["Plaintext"] != pt:
                return f"ciphertext of {pt!r} decrypts to something else"
        except ClientError as exc:
            return f"ciphertext of {pt!r}: {exc.response['Error']['Code']}"
        return None

    def signature(item: tuple[str, bytes, bytes]) -> str | None:
        key, msg, sig = item
        pub = public[key]
        try:
            if isinstance(pub, ec.EllipticCurvePublicKey):
                pub.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
            elif isinstance(pub, rsa.RSAPublicKey):
                pub.verify(sig, msg, padding.PSS(padding.MGF1(hashes.SHA256()),
                                                 padding.PSS.DIGEST_LENGTH), hashes.SHA256())
            else:
                return f"unexpected public key type of {key}"
        except Exception as exc:  # noqa: BLE001 - InvalidSignature: a finding
            return f"signature of {msg!r} by {key}: {type(exc).__name__}"
        return None

    def created(key_id: str) -> str | None:
        try:
            state = client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"]
        except ClientError as exc:
            return f"created key {key_id}: {exc.response['Error']['Code']}"
        return None if state == "Enabled" else f"created key {key_id} is {state}"

    with ThreadPoolExecutor(threads) as pool:
        found = [*pool.map(ciphertext, list(load.ciphertexts)),
                 *pool.map(created, list(load.created))]
    found += [signature(s) for s in load.signatures]
    return [p for p in found if p is not None]


# --- /metrics -------------------------------------------------------------------------

_SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def metrics(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read().decode()
        if r.status != 200:
            raise AssertionError(f"/metrics: {r.status} {body[:200]}")
        return body
    finally:
        conn.close()


@dataclass(frozen=True)
class TokenMetrics:
    """What ``/metrics`` says of the tokens: each worker's view of each token's state, and
    the ejections summed over the workers."""

    states: dict[tuple[str, str], str]  # (worker, token) -> state
    ejections: dict[str, int]  # token -> count

    @classmethod
    def parse(cls, text: str) -> TokenMetrics:
        states: dict[tuple[str, str], str] = {}
        ejections: dict[str, int] = {}
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if not m:
                continue
            labels = dict(_LABEL.findall(m.group(2)))
            if m.group(1) == "hsmpool_token_state" and float(m.group(3)) == 1:
                states[(labels["worker"], labels["token"])] = labels["state"]
            elif m.group(1) == "hsmpool_token_ejections_total":
                ejections[labels["token"]] = int(float(m.group(3)))
        return cls(states, ejections)

    @classmethod
    def read(cls, port: int) -> TokenMetrics:
        return cls.parse(metrics(port))

    def seen_as(self, token: str) -> set[str]:
        """The states the workers report for ``token``."""
        return {st for (_, tok), st in self.states.items() if tok == token}

    def all_healthy(self, tokens: Iterable[str]) -> bool:
        return all(self.seen_as(t) == {"healthy"} for t in tokens)


def wait_until(check: Callable[[], bool], limit: float, step: float = 0.1) -> float:
    """Poll ``check`` until true -> seconds waited; AssertionError after ``limit``."""
    t0 = time.monotonic()
    while True:
        if check():
            return time.monotonic() - t0
        if time.monotonic() - t0 > limit:
            raise AssertionError(f"not reached within {limit} s")
        time.sleep(step)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank); 0 for none."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]
