"""Random passwords, as AWS Secrets Manager's GetRandomPassword makes them.

Parameters and limits as AWS documents them: ``length`` 4..4096 (default 32); the character
classes lower-case letters, upper-case letters, digits and punctuation
(``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~``), each of which can be excluded, plus an optional
space; ``exclude_characters`` removes single characters; ``require_each_included_type``
(default on) guarantees at least one character of every class still included. Characters
come from ``secrets.SystemRandom``; the required ones are placed at random positions.
"""

from __future__ import annotations

import secrets
import string
from typing import Final

__all__ = ["PUNCTUATION", "PasswordError", "random_password"]

PUNCTUATION: Final = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
MIN_LENGTH: Final = 4
MAX_LENGTH: Final = 4096


class PasswordError(ValueError):
    """The parameters leave no valid password (bad length, nothing left to draw from)."""


def random_password(length: int = 32, *, exclude_characters: str = "",
                    exclude_numbers: bool = False, exclude_punctuation: bool = False,
                    exclude_uppercase: bool = False, exclude_lowercase: bool = False,
                    include_space: bool = False,
                    require_each_included_type: bool = True) -> str:
    if isinstance(length, bool) or not isinstance(length, int) \
            or not MIN_LENGTH <= length <= MAX_LENGTH:
        raise PasswordError(f"PasswordLength must be {MIN_LENGTH}..{MAX_LENGTH}")
    if not isinstance(exclude_characters, str) or len(exclude_characters) > 4096:
        raise PasswordError("ExcludeCharacters must be a string of at most 4096 characters")
    drop = set(exclude_characters)
    classes = []
    for excluded, chars in ((exclude_lowercase, string.ascii_lowercase),
                            (exclude_uppercase, string.ascii_uppercase),
                            (exclude_numbers, string.digits),
                            (exclude_punctuation, PUNCTUATION),
                            (not include_space, " ")):
        if not excluded:
            kept = "".join(c for c in chars if c not in drop)
            if kept:
                classes.append(kept)
    if not classes:
        raise PasswordError("the exclusions leave no character to make a password from")
    if require_each_included_type and len(classes) > length:
        raise PasswordError(f"a password of {length} characters cannot include each of "
                            f"{len(classes)} character types")
    alphabet = "".join(classes)
    rng = secrets.SystemRandom()
    picked = [secrets.choice(alphabet) for _ in range(length)]
    if require_each_included_type:
        slots = rng.sample(range(length), len(classes))
        for slot, cls in zip(slots, classes, strict=True):
            picked[slot] = secrets.choice(cls)
    return "".join(picked)
