"""The ``hsmpool`` command: the pool's commands (:mod:`hsmpool.cli`) plus the service's.

    hsmpool [--config FILE] status [--self-test] [--json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hsmpool import cli as pool_cli


def build_parser() -> argparse.ArgumentParser:
    from kms.api import commands as server_commands

    parser = pool_cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    server_commands.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from kms.errors import KmsError

    try:
        return pool_cli.main(argv, build_parser())
    except KmsError as exc:
        print(f"hsmpool: {exc.code}: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
