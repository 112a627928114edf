"""Processes of one host opening the same SoftHSM2 token at the same moment all get it.

SoftHSM2 rewrites a token's file at every login. A process that initialises the library
while another logs in can lose the token's user PIN (every later login answers
CKR_USER_PIN_NOT_INITIALIZED) or read a blank label (the token looks missing). Before the
host lock (hsmpool._hostlock), four processes opening a pool over one token for 20 s failed
185 of about 9,000 opens. Here, three processes open a pool over one fresh token as fast as
they can for a few seconds, and every open must succeed.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, SOFTHSM

_OPENER = """
import collections, json, sys, time
from hsmpool.config import load_config
from hsmpool.pool import Pool
cfg = load_config(sys.argv[1])
end = time.monotonic() + float(sys.argv[2])
seen = collections.Counter()
while time.monotonic() < end:
    try:
        Pool(cfg).close()
        seen["ok"] += 1
    except Exception as exc:  # what the test reports
        seen[type(exc).__name__ + ": " + str(exc)] += 1
print(json.dumps(seen))
"""


def test_processes_opening_one_token_at_once_all_open_it(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    subprocess.run(["bash", str(ROOT / "softhsm-config" / "make-tokens.sh"), str(tokens),
                    "1", "race"], check=True, capture_output=True)
    cfg = tmp_path / "pool.toml"
    cfg.write_text(
        "[pool]\nprobe_interval = 5.0\n"
        f'[modules.softhsm]\npath = "{SOFTHSM}"\n'
        f'env = {{ SOFTHSM2_CONF = "{tokens / "softhsm2.conf"}" }}\n'
        '[tokens.r0]\nmodule = "softhsm"\nlabel = "race-0"\n'
        f'pin_file = "{tokens / "user.pin"}"\n')
    procs = [subprocess.Popen([sys.executable, "-c", _OPENER, str(cfg), "6"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outcomes = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    failures = {k: v for o in outcomes for k, v in o.items() if k != "ok"}
    assert failures == {}, failures
    assert all(o.get("ok", 0) >= 20 for o in outcomes), outcomes  # they did race


def test_without_a_writable_temporary_directory(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The token-files lock is a guard, not a condition: with no folder for it, opening goes
    on unlocked, with one warning. The domain-key set-up lock is a condition: an error."""
    from hsmpool import _hostlock

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    monkeypatch.setattr(_hostlock, "_warned", False)
    ran = []
    with caplog.at_level(logging.WARNING, logger="hsmpool"):
        for _ in range(2):
            with _hostlock.token_files():
                ran.append(1)
    assert ran == [1, 1]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "token-files" in warnings[0], warnings
    with pytest.raises(OSError), _hostlock.host_lock("instance-x"):
        pass
