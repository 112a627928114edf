"""``benchmarks.fuzz`` at a small volume: signed but malformed requests on every front end and
mutated ciphertexts against a real 2-worker ``hsmpool serve`` (its own SoftHSM2 tokens, its
KMS-instance port over TLS).

The full run (``python -m benchmarks.fuzz``: 100,000 requests per front end and 100,000
ciphertexts) takes minutes; here each front end gets :data:`REQUESTS` and Decrypt
:data:`CIPHERTEXTS` mutated ciphertexts, made in this process (no signing processes), so the
whole test stays well under a minute on the project's 2-core machine. Every bar of the
module must hold: no 5xx, every request answered, no answer in 1 s or more (the issue's
bound), every error typed, no mutated ciphertext decrypted, the server alive with the same
workers, a valid request on each front end served after the run, no traceback in its log,
and the stored key, alias, tags, policy and secret unchanged.
"""

from __future__ import annotations

from benchmarks import fuzz

REQUESTS = 5_000
CIPHERTEXTS = 5_000


def test_signed_malformed_requests_at_volume() -> None:
    doc = fuzz.run(fuzz.Options(requests=REQUESTS, ciphertexts=CIPHERTEXTS,
                                connections=8, sign_processes=0, seed=7))
    print("\n" + fuzz.report(doc))
    phases = {p["name"]: p for p in doc["phases"]}
    assert set(phases) == {*fuzz.FRONT_ENDS, fuzz.CIPHERTEXTS}
    for name, p in phases.items():
        assert p["requests"] == (CIPHERTEXTS if name == fuzz.CIPHERTEXTS else REQUESTS)
        # Each kind of malformation was sent, and what was sent was mostly refused (4xx).
        assert set(p["kinds"]) == set(fuzz.PHASE_KINDS[name]), (name, sorted(p["kinds"]))
        assert p["classes"].get("4xx", 0) > 0.9 * p["requests"], (name, p["classes"])
    # The signed requests got past authentication (into the parsers), not only refused there.
    assert phases["aws-kms"]["codes"].get("ValidationException", 0) > 100
    assert phases["alibaba"]["codes"].get("InvalidParameter", 0) > 100
    assert phases["kms-instance"]["codes"].get("InvalidParam", 0) > 100
    assert phases[fuzz.CIPHERTEXTS]["codes"].get("InvalidCiphertextException", 0) > 1000
    failed = [b for b in doc["bars"] if not b["ok"]]
    assert not failed, failed
