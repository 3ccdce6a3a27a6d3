"""Every Redis key name the project uses, built in one place.

Layout (``vs`` is the default prefix, ``news`` a model, ``3`` a version)::

    vs#models                 set of model names
    vs:{news}#current         version the model's alias points to (string)
    vs:{news}#seq             version counter (INCR)
    vs:{news}#lock            loader lock (SET NX PX, value names the owner)
    vs:{news}#versions        set of versions that exist, complete or staging
    vs:{news}:3#meta          hash: dim, dtype, count, checksum, state, ...
    vs:{news}:3#i2k:17        tokens 17*1024 .. 17*1024+1023, joined by "\\n"
    vs:{news}:3#vset          Redis 8 vector set (similarity index)
    vs:{news}:3#vset-build    vector set being built, renamed to #vset when done
    vs:{news}:3#vset-lock     index builder lock (SET NX PX, value names the owner)
    vs:{news}:3#bloom         fastText models: Bloom filter of the vocabulary (raw bytes)
    vs:news:3#vset{news:3:2.5}        one shard of a sharded index (build 2, candidate 5)
    vs:news:3#vset-build{news:3:2.5}  that shard while it is being built
    vs:news:3:<token>         raw little-endian vector bytes + uint32 index
    vs:news:3:{news:3:7}<token>  the same, for a version loaded into a cluster: tokens in
                              one group per master (see vectorstore.view.TokenKeys)
    vs:news:3#ng:<bucket>     fastText models: n-gram bucket row, same layout
                              (vector bytes + uint32 bucket number)

On a Redis Cluster, the ``{news}`` hash tag keeps a model's structure keys in
one slot (so the alias, the metadata and the index->token chunks are read and
written together, atomically), while its n-gram keys, without a tag, spread
over every node, and its token keys fall in one hash-tagged group per master.
Structure keys start ``vs:{``, which no token key does (model names hold no
``{``); within a version, tokens always follow ``:`` and structures ``#``, and
model names may contain neither.

A sharded similarity index (:mod:`vectorstore.index`) gives each shard a hash
tag of its own, chosen at build time so that the shards land on different
nodes; a shard and its build key share that tag (one slot, so the build key
can be renamed into place). The version's metadata names the shard keys.

>>> k = Keys("news")
>>> k.token_prefix(3) + "car".encode()
b'vs:news:3:car'
>>> k.current
'vs:{news}#current'
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
    def tagged(self) -> str:
        """``prefix:{name}``: the start of every structure key (one cluster hash slot)."""
        return f"{self.prefix}:{{{self.name}}}"

    @property
    def models(self) -> str:
        return models_key(self.prefix)

    @property
    def current(self) -> str:
        return f"{self.tagged}#current"

    @property
    def seq(self) -> str:
        return f"{self.tagged}#seq"

    @property
    def lock(self) -> str:
        return f"{self.tagged}#lock"

    @property
    def versions(self) -> str:
        return f"{self.tagged}#versions"

    def meta(self, version: int) -> str:
        return f"{self.tagged}:{version}#meta"

    def i2k(self, version: int, chunk: int) -> str:
        return f"{self.tagged}:{version}#i2k:{chunk}"

    def vset(self, version: int) -> str:
        return f"{self.tagged}:{version}#vset"

    def vset_build(self, version: int) -> str:
        return f"{self.tagged}:{version}#vset-build"

    def vset_lock(self, version: int) -> str:
        return f"{self.tagged}:{version}#vset-lock"

    def vset_shard(self, version: int, build: int, candidate: int) -> str:
        """A shard of a sharded index, with a hash tag of its own (chosen for its slot).

        >>> Keys("news").vset_shard(3, 2, 5)
        'vs:news:3#vset{news:3:2.5}'
        """
        return f"{self.base}:{version}#vset{{{self.name}:{version}:{build}.{candidate}}}"

    @staticmethod
    def shard_build(shard: str) -> str:
        """The key a shard is built in (same hash tag, so the same slot).

        >>> Keys.shard_build('vs:news:3#vset{news:3:2.5}')
        'vs:news:3#vset-build{news:3:2.5}'
        """
        head, tag = shard.split("#vset{", 1)
        return f"{head}#vset-build{{{tag}"

    def bloom(self, version: int) -> str:
        return f"{self.tagged}:{version}#bloom"

    def token_prefix(self, version: int) -> bytes:
        """Bytes to prepend to a UTF-8 token to get its vector key."""
        return f"{self.base}:{version}:".encode()

    def token(self, version: int, token: str) -> bytes:
        return self.token_prefix(version) + token.encode("utf-8")

    def token_group_tag(self, version: int, candidate: int) -> str:
        """A hash tag for a token group of ``version`` (the loader tries candidates in turn)."""
        return f"{self.name}:{version}:{candidate}"

    def token_group_prefix(self, version: int, tag: str) -> bytes:
        """Bytes to prepend to a UTF-8 token of group ``tag`` (a version loaded into a cluster:
        :class:`vectorstore.view.TokenKeys`) to get its vector key.

        >>> Keys("news").token_group_prefix(3, "news:3:7") + b"car"
        b'vs:news:3:{news:3:7}car'
        """
        return self.token_prefix(version) + b"{" + tag.encode() + b"}"

    def ngram_prefix(self, version: int) -> bytes:
        """Bytes to prepend to a decimal bucket number to get its n-gram row key.

        >>> Keys("ft").ngram_prefix(3) + b"17"
        b'vs:ft:3#ng:17'
        """
        return f"{self.base}:{version}#ng:".encode()

    def ngram(self, version: int, bucket: int) -> bytes:
        return self.ngram_prefix(version) + str(bucket).encode()

    def version_patterns(self, version: int) -> tuple[str, str]:
        """SCAN patterns matching every key of one version: structures, tokens and n-grams
        (the shards of a sharded index match the second).

        >>> Keys("news").version_patterns(3)
        ('vs:{news}:3#*', 'vs:news:3[:#]*')
        """
        return f"{self.tagged}:{version}#*", f"{self.base}:{version}[:#]*"
