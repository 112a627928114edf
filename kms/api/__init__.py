"""The HTTP front ends of the service: one ASGI application (:mod:`kms.api.app`) that speaks
the AWS KMS JSON 1.1 protocol (:mod:`kms.api.aws_kms`) with SigV4 authentication
(:mod:`kms.api.sigv4`), plus ``/healthz`` and ``/metrics``. A front end never touches a
token: it parses, authenticates, and calls :class:`kms.KmsClient`."""
