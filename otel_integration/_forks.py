"""Fork safety: objects whose threads, locks or sockets must be renewed in a forked child.

A child forked while another thread holds a lock, runs a probe or owns a
socket (gunicorn ``--preload``, multiprocessing with the fork start method)
inherits the lock held forever, the "probe running" flag set, the socket
shared. Objects registered here get ``_after_fork()`` called in the child,
before any other code of it runs.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class _ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_objects: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


def reset_in_child(obj: _ForkAware) -> None:
    _objects.add(obj)


def _in_child() -> None:
    for obj in list(_objects):
        try:
            obj._after_fork()
        except Exception:  # noqa: BLE001 - a child must start even if one reset fails
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_child)
