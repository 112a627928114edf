"""``hsmpool serve --dev``: a throw-away server that needs no configuration.

It makes a private temporary folder (0700) holding two fresh SoftHSM2 tokens (random user
and SO PINs, never printed), their ``softhsm2.conf`` and a configuration of one instance
``default`` on both tokens, with the metadata store in memory (SQLite ``:memory:``) and the
audit trail in the folder; it serves with one worker (the in-memory store lives in that
process), creates an admin access key (``kms:*`` on ``*``) and prints it on stderr. When
the server stops (SIGTERM, SIGINT) the folder is deleted: keys, tokens, audit, all gone.

Needs SoftHSM2 (``softhsm2-util`` and ``libsofthsm2.so``; Debian: ``apt-get install
softhsm2``). Everything else of ``hsmpool serve`` applies (``--host``, ``--port``,
``--seed``, ``--access-log``, ...), except ``--workers``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from kms.service import Kms

SOFTHSM_LIBS: Final = ("/usr/lib/softhsm/libsofthsm2.so",
                       "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                       "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
                       "/usr/local/lib/softhsm/libsofthsm2.so")
TOKENS: Final = 2
INSTANCE: Final = "default"


class DevError(Exception):
    """The dev environment cannot be made (one line)."""


def softhsm_library() -> str:
    explicit = os.environ.get("HSMPOOL_SOFTHSM2_LIB")
    for path in ((explicit,) if explicit else SOFTHSM_LIBS):
        if path and os.path.isfile(path):
            return path
    raise DevError("serve --dev needs SoftHSM2 (libsofthsm2.so not found; Debian: apt-get "
                   "install softhsm2, or set HSMPOOL_SOFTHSM2_LIB)")


def make_environment(root: Path) -> Path:
    """Tokens, PIN files and the configuration under ``root``; returns the config path."""
    lib = softhsm_library()
    util = shutil.which("softhsm2-util")
    if util is None:
        raise DevError("serve --dev needs softhsm2-util (Debian: apt-get install softhsm2)")
    tokens = root / "softhsm" / "tokens"
    tokens.mkdir(parents=True, mode=0o700)
    conf = root / "softhsm" / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    user_pin, so_pin = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    for name, value in (("user.pin", user_pin), ("so.pin", so_pin)):
        path = root / "softhsm" / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    for i in range(TOKENS):
        # The PINs reach softhsm2-util on its command line, as make-tokens.sh does: they
        # are throw-away PINs of throw-away tokens.
        done = subprocess.run([util, "--init-token", "--free", "--label", f"dev-{i}",
                               "--so-pin", so_pin, "--pin", user_pin], env=env,
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise DevError(f"softhsm2-util could not make a token: "
                           f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")
    lines = ["[pool]", "slow_call_ms = 30000", "[modules.softhsm]", f'path = "{lib}"',
             f'env = {{ SOFTHSM2_CONF = "{conf}" }}']
    for i in range(TOKENS):
        lines += [f"[tokens.t{i}]", 'module = "softhsm"', f'label = "dev-{i}"',
                  'pin_file = "softhsm/user.pin"', 'so_pin_file = "softhsm/so.pin"']
    lines += [f"[instances.{INSTANCE}]",
              "tokens = [" + ", ".join(f'"t{i}"' for i in range(TOKENS)) + "]",
              "[kms]", 'database = ":memory:"', 'audit_dir = "audit"',
              "[server]", 'state_dir = "run"']
    config = root / "hsmpool.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def _admin_credential(kms: Kms) -> list[str]:
    from kms.cli.server import ADMIN_POLICY
    from kms.credentials import create_access_key

    key = create_access_key(kms, INSTANCE, "admin", [ADMIN_POLICY], actor="dev")
    return ["dev mode: in-memory store and ephemeral SoftHSM2 tokens, all deleted at exit",
            f"dev credential: AccessKeyId={key.access_key_id} "
            f"SecretAccessKey={key.secret_access_key} (instance {INSTANCE}, kms:* on *)"]


def serve_dev(overrides: Mapping[str, Any]) -> int:
    """``hsmpool serve --dev``; returns the exit status."""
    from kms.server.run import say, serve

    if overrides.get("workers", 1) != 1:
        say("serve --dev runs one worker (its store is in memory): drop --workers")
        return 2
    root = Path(tempfile.mkdtemp(prefix="hsmpool-dev-"))
    try:
        os.chmod(root, 0o700)
        try:
            config = make_environment(root)
        except (DevError, OSError, subprocess.SubprocessError) as exc:
            say(str(exc))
            return 1
        return serve(str(config), {**overrides, "workers": 1}, prepare=_admin_credential)
    finally:
        shutil.rmtree(root, ignore_errors=True)
