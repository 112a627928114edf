"""A token that lacks an instance's domain keys does not make the instance ready.

Found by ``python -m benchmarks.soak`` run on a configuration without an SO PIN: the
instance's domain keys were on one token of three, and with that token ejected every key
operation failed (a 5xx; DependencyTimeoutException now) while ``/readyz`` said ready and
``/healthz`` ok with "2 healthy tokens": the two tokens without the keys were counted,
though they serve none of the instance's key operations. A load balancer kept sending
traffic to a node that could answer none of it.

Here: instance "keyless" with its domain keys on hsmpool-5 only (made with the SO PIN on a
partition of that token alone), then served on tokens 5 and 6 with no SO PIN (6 cannot get
them). The readiness count is 1; once 5 fails (fault shim, device_error) and is ejected, the
node is not ready and names the instance; healed, it is ready again without a restart.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from botocore.exceptions import ClientError

from tests.faults import FaultInjector
from tests.server.conftest import (
    HSMPOOL,
    Server,
    create_credential,
    run_server,
    write_server_config,
)

INSTANCE = "keyless"


def _readyz(server: Server) -> tuple[int, dict[str, object]]:
    status, _, body = server.get("/readyz")
    return status, dict(json.loads(body))


def test_tokens_without_the_domain_keys_do_not_count_as_serving(
        token_dir: Path, tmp_path: Path, faults: FaultInjector) -> None:
    admin_cfg = write_server_config(tmp_path / "admin", token_dir, {INSTANCE: [5]})
    subprocess.run([str(HSMPOOL), "--config", str(admin_cfg), "status", "--json"],
                   capture_output=True, timeout=120, check=True)  # the keys, on t5 only
    cfg = write_server_config(tmp_path / "serve", token_dir, {INSTANCE: [5, 6]})
    cfg.write_text("\n".join(x for x in cfg.read_text().splitlines()
                             if not x.startswith("so_pin")) + "\n")
    cred = create_credential(cfg, INSTANCE, "app")
    with run_server(cfg) as srv:
        assert "domain keys are missing on token(s) t6" in srv.log_text()
        status, doc = _readyz(srv)
        assert status == 200 and doc["healthy_tokens_per_instance"] == {INSTANCE: 1}, doc
        kms = srv.client(cred)
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        ct = kms.encrypt(KeyId=key, Plaintext=b"kept")["CiphertextBlob"]

        faults.fail("hsmpool-5", "device_error")
        codes = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # tokens are judged by use
            try:
                kms.encrypt(KeyId=key, Plaintext=b"x")
            except ClientError as exc:
                codes.add(exc.response["Error"]["Code"])
            status, doc = _readyz(srv)
            if status == 503:
                break
            time.sleep(0.05)
        print(f"\nwith t5 failing: /readyz {status} {doc}; errors seen {codes}")
        assert codes == {"DependencyTimeoutException"}, codes
        assert status == 503, doc
        assert doc["instances_without_healthy_tokens"] == [INSTANCE], doc
        assert srv.get("/healthz")[0] == 503

        faults.heal()
        deadline = time.monotonic() + 20
        while _readyz(srv)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _readyz(srv)[0] == 200
        assert kms.decrypt(CiphertextBlob=ct)["Plaintext"] == b"kept"
