"""The Redis ACL users the README recommends: the README shows these lines verbatim, and
tests/test_acl.py runs these very lines.

* ``worker``: read-only on the model keys, plus what a client sends on its own: ``PING``
  (redis-py's health check of an idle connection), ``CLIENT SETINFO`` (on connect) and
  ``SELECT`` (a URL with a database other than 0); vector-set reads (``VSIM``, ``VCARD``)
  are module commands outside ``@read``; ``-@dangerous`` takes ``KEYS``, ``SORT_RO``
  and ``INFO`` back out of ``@read``. ``CLUSTER INFO`` tells a cluster from one server
  (:mod:`vectorstore.topology`), ``CLUSTER SLOTS`` maps a cluster's slots and ``READONLY``
  lets a cluster replica serve reads. ``AUTH`` and ``HELLO`` are always allowed.
* ``loader``: everything on the model keys (``vs:<name>...`` and ``vs#models``) but the
  dangerous commands; ``INFO`` to name the server's version when it has no vector sets;
  ``CLUSTER INFO`` and ``CLUSTER SLOTS`` as for the worker.
"""
from __future__ import annotations

WORKER_ACL = ("ACL SETUSER worker on >worker-password ~vs:* -@all +@read -@dangerous +vsim "
              "+vcard +ping +select +client|setinfo +cluster|info +cluster|slots +readonly")
LOADER_ACL = ("ACL SETUSER loader on >loader-password ~vs:* ~vs#* +@all -@dangerous +info "
              "+cluster|info +cluster|slots")
README_ACL = (WORKER_ACL, LOADER_ACL)
