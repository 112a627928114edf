"""The secrets manager (the brief's 凭据管家): versioned secrets with stages, envelope-encrypted
under an instance's KMS keys, rotated by built-in rotators.

* :mod:`kms.secrets.model`: the records (a secret, its versions and their stages);
* :mod:`kms.secrets.envelope`: how a value is sealed under a KMS key;
* :mod:`kms.secrets.manage`: the operations (:class:`~kms.secrets.manage.Secrets`, part of
  :class:`kms.KmsClient`), on the pipeline of :mod:`kms.caller`;
* :mod:`kms.secrets.rotation`: the four rotation steps and the built-in rotators;
* :mod:`kms.secrets.passwords`, :mod:`kms.secrets.schedule`: GetRandomPassword and
  RotationRules.

The AWS Secrets Manager wire protocol is a front end of its own, :mod:`kms.api.aws_secrets`.
"""
