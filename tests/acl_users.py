"""The Redis ACL users the README recommends: the README shows these lines verbatim, and
tests/test_acl.py runs these very lines.

* ``worker``: read-only on the model keys, plus what a client sends on its own: ``PING``
  (redis-py's health check of an idle connection), ``CLIENT SETINFO`` (on connect) and
  ``SELECT`` (a URL with a database other than 0); vector-set reads (``VSIM``, ``VCARD``)
  are module commands outside ``@read``; ``-@dangerous`` takes ``KEYS``, ``SORT_RO``
  and ``INFO`` back out of ``@read``. ``AUTH`` and ``HELLO`` are always allowed.
* ``loader``: everything on the model keys (``vs:<name>...`` and ``vs#models``) but the
  dangerous commands; ``INFO`` to name the server's version when it has no vector sets.
"""
from __future__ import annotations

WORKER_ACL = ("ACL SETUSER worker on >worker-password ~vs:* "
              "-@all +@read -@dangerous +vsim +vcard +ping +select +client|setinfo")
LOADER_ACL = "ACL SETUSER loader on >loader-password ~vs:* ~vs#* +@all -@dangerous +info"
README_ACL = (WORKER_ACL, LOADER_ACL)
