"""Callers of the HTTP front ends: access keys -> principals -> service clients.

One :class:`Authenticator` per worker, shared by the front ends: it verifies AWS SigV4
signatures (per signing service name: ``kms``, later ``secretsmanager``), maps an access key
to its principal (:class:`kms.credentials.CredentialStore`), and keeps one
:class:`~kms.service.KmsClient` per (access key, source address) — a client caches its
authorization decisions. When another process commits to the store (a credential created,
disabled, deleted; a policy replaced), every cache here is dropped within 50 ms.

The source address is the TCP peer's, or what trusted proxies say it was
(:mod:`kms.api.netaddr`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from kms.api.netaddr import Network, source_address
from kms.api.sigv4 import Credential, Verifier
from kms.credentials import CredentialStore
from kms.service import Kms, KmsClient


class Authenticator:
    def __init__(self, kms: Kms, regions: tuple[str, ...],
                 trusted_proxies: tuple[Network, ...]) -> None:
        self.kms = kms
        self.creds = CredentialStore(kms)
        self.regions = regions
        self.trusted_proxies = trusted_proxies
        self._verifiers: dict[str, Verifier] = {}
        self._clients: dict[tuple[str, str | None], KmsClient] = {}
        self._version = kms.refresh()
        #: Called when the caches are dropped (other front ends' caches of callers).
        self.on_forget: list[Callable[[], None]] = []

    def verifier(self, service: str) -> Verifier:
        v = self._verifiers.get(service)
        if v is None:
            v = self._verifiers[service] = Verifier(self.creds.secret_for, self.regions,
                                                    service)
        return v

    def sigv4(self, service: str, method: str, path: str, query: str,
              headers: Mapping[str, str], body: bytes) -> Credential:
        """The verified credential of a request, or :class:`~kms.api.sigv4.AuthError`."""
        self.fresh()
        return self.verifier(service).verify(method, path, query, headers, body)

    def client(self, access_key_id: str, peer: str | None, forwarded_for: str | None
               ) -> KmsClient:
        """The service client of an access key seen from one address (cached per pair).
        Raises ``kms.errors.KmsError`` (or the pool's InstanceNotFoundError) for a key
        whose principal or instance is gone."""
        source_ip = source_address(peer, forwarded_for, self.trusted_proxies)
        key = (access_key_id, source_ip)
        client = self._clients.get(key)
        if client is None:
            principal = self.creds.principal_for(access_key_id)
            client = self.kms.client(principal.instance, principal, source_ip)
            if len(self._clients) > 10000:
                self._clients.clear()
            self._clients[key] = client
        return client

    def fresh(self) -> None:
        """Forget cached principals, their clients, the SigV4 signing keys and the
        authorization decisions when another process committed (``credentials create``
        replaces a principal's policies; ``credentials disable|delete`` revokes a key): when
        the service drops its key caches (:meth:`kms.service.Kms.refresh`: within 50 ms, or
        at the store's notification; served from caches for a while if the store is down)."""
        dv = self.kms.refresh()
        if dv == self._version:
            return
        self._version = dv
        for v in self._verifiers.values():
            v.forget()  # no signing key of a revoked secret outlives the change
        self.creds.forget()
        self._clients.clear()
        for forget in self.on_forget:
            forget()
        self.kms.forget_authorizations()  # after the new principals are what callers get
