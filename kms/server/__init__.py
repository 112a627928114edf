"""``hsmpool serve``: the server process around the worker application (:mod:`kms.api`).

Start-up checks in the parent (:mod:`kms.server.startup`), the supervisor of the worker
processes (:mod:`kms.server.supervisor`, :mod:`kms.server.worker`), running uvicorn with our
HTTP/1.1 protocol (:mod:`kms.server.run`), ``--dev`` (:mod:`kms.server.devenv`) and seed files
(:mod:`kms.server.seed`). This package wires the pool, the store and the service together;
the front ends in :mod:`kms.api` see only the service.
"""
