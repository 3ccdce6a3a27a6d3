"""Every Redis key name the project uses, built in one place.

Layout (``vs`` is the default prefix, ``news`` a model, ``3`` a version)::

    vs#models                 set of model names
    vs:news#current           version the model's alias points to (string)
    vs:news#seq               version counter (INCR)
    vs:news#lock              loader lock (SET NX PX, value names the owner)
    vs:news#versions          set of versions that exist, complete or staging
    vs:news:3#meta            hash: dim, dtype, count, checksum, state, ...
    vs:news:3#i2k:17          tokens 17*1024 .. 17*1024+1023, joined by "\\n"
    vs:news:3#vset            Redis 8 vector set (similarity index)
    vs:news:3#vset-build      vector set being built, renamed to #vset when done
    vs:news:3#vset-lock       index builder lock (SET NX PX, value names the owner)
    vs:news:3#bloom           fastText models: Bloom filter of the vocabulary (raw bytes)
    vs:news:3:<token>         raw little-endian vector bytes + uint32 index
    vs:news:3#ng:<bucket>     fastText models: n-gram bucket row, same layout
                              (vector bytes + uint32 bucket number)

Token keys and structure keys of a version cannot collide: tokens always
follow ``:`` and structures follow ``#``, and model names may contain neither.

>>> k = Keys("news")
>>> k.token_prefix(3) + "car".encode()
b'vs:news:3:car'
>>> k.current
'vs:news#current'
"""
from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "vs"
I2K_CHUNK = 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def check_name(name: str, what: str = "model name") -> str:
    """Return ``name`` if it is a valid model name or prefix, else raise ValueError.

    >>> check_name("google-news_300")
    'google-news_300'
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid {what} {name!r}: use 1-128 characters from A-Z a-z 0-9 _ . -"
        )
    return name


def models_key(prefix: str = DEFAULT_PREFIX) -> str:
    """The set of all model names under ``prefix``."""
    return f"{check_name(prefix, 'prefix')}#models"


@dataclass(frozen=True)
class Keys:
    """Key names of one model under one prefix."""

    name: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_name(self.name)
        check_name(self.prefix, "prefix")

    @property
    def base(self) -> str:
        return f"{self.prefix}:{self.name}"

    @property
    def models(self) -> str:
        return models_key(self.prefix)

    @property
    def current(self) -> str:
        return f"{self.base}#current"

    @property
    def seq(self) -> str:
        return f"{self.base}#seq"

    @property
    def lock(self) -> str:
        return f"{self.base}#lock"

    @property
    def versions(self) -> str:
        return f"{self.base}#versions"

    def meta(self, version: int) -> str:
        return f"{self.base}:{version}#meta"

    def i2k(self, version: int, chunk: int) -> str:
        return f"{self.base}:{version}#i2k:{chunk}"

    def vset(self, version: int) -> str:
        return f"{self.base}:{version}#vset"

    def vset_build(self, version: int) -> str:
        return f"{self.base}:{version}#vset-build"

    def vset_lock(self, version: int) -> str:
        return f"{self.base}:{version}#vset-lock"

    def bloom(self, version: int) -> str:
        return f"{self.base}:{version}#bloom"

    def token_prefix(self, version: int) -> bytes:
        """Bytes to prepend to a UTF-8 token to get its vector key."""
        return f"{self.base}:{version}:".encode()

    def token(self, version: int, token: str) -> bytes:
        return self.token_prefix(version) + token.encode("utf-8")

    def ngram_prefix(self, version: int) -> bytes:
        """Bytes to prepend to a decimal bucket number to get its n-gram row key.

        >>> Keys("ft").ngram_prefix(3) + b"17"
        b'vs:ft:3#ng:17'
        """
        return f"{self.base}:{version}#ng:".encode()

    def ngram(self, version: int, bucket: int) -> bytes:
        return self.ngram_prefix(version) + str(bucket).encode()

    def version_pattern(self, version: int) -> str:
        """SCAN pattern matching every key of one version (tokens and structures)."""
        return f"{self.base}:{version}[:#]*"
