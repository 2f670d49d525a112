"""Object storage: the etcd and watch cache of the fake API server.

Objects are plain JSON dicts keyed by (storage key, namespace, name). Every write takes the
next value of one global resourceVersion counter, is kept in a bounded history, and is
handed to the watchers registered at that moment, in order, under one lock. Readers get
deep copies, so nothing outside can change a stored object or a past event.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sandbox.kube import clock

HISTORY = 10_000  # changes kept for watches from an old resourceVersion; older ones get 410 Gone


@dataclass(frozen=True)
class Change:
    """One write. `obj` is the object after it (for DELETED, as it was, with the deletion's
    resourceVersion); `old` is the object before it, None for ADDED."""

    rv: int
    type: str
    key: str
    namespace: str
    name: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


Watcher = Callable[[Change], None]


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        self._rv = 1
        self._history: deque[Change] = deque(maxlen=HISTORY)
        self._watchers: list[Watcher] = []

    @property
    def rv(self) -> int:
        with self.lock:
            return self._rv

    # --- reads --------------------------------------------------------------------

    def get(self, key: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self._objects.get(key, {}).get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self, key: str, namespace: str | None = None, *, copy_items: bool = True
    ) -> tuple[list[dict[str, Any]], int]:
        """Objects of one kind, sorted by namespace and name, and the resourceVersion they were
        read at. With copy_items=False the stored dicts themselves: a stored object is never
        changed in place (a write stores a new dict), so they are safe to read, not to change."""
        with self.lock:
            items = [
                copy.deepcopy(obj) if copy_items else obj
                for (ns, _), obj in sorted(self._objects.get(key, {}).items())
                if namespace is None or ns == namespace
            ]
            return items, self._rv

    def iter_all(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every stored object of every kind (copies), for the garbage collector."""
        with self.lock:
            snapshot = [
                (key, copy.deepcopy(obj)) for key, objs in self._objects.items() for obj in objs.values()
            ]
        yield from snapshot

    # --- writes -------------------------------------------------------------------

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _record(self, change: Change) -> None:
        self._history.append(change)
        for watcher in list(self._watchers):
            watcher(change)
        self.changed.notify_all()

    def create(self, key: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object, with a resourceVersion, and a uid and creationTimestamp unless
        the caller set them. The caller has checked that the name is free."""
        with self.lock:
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", clock.rfc3339())
            return self._put(key, obj, None, "ADDED")

    def replace(self, key: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new version of an existing object; the caller has checked preconditions."""
        with self.lock:
            meta = obj["metadata"]
            old = self._objects.get(key, {}).get((meta.get("namespace", ""), meta["name"]))
            return self._put(key, obj, old, "MODIFIED")

    def _put(self, key: str, obj: dict[str, Any], old: dict[str, Any] | None, type_: str) -> dict[str, Any]:
        meta = obj["metadata"]
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        stored = copy.deepcopy(obj)
        namespace, name = meta.get("namespace", ""), meta["name"]
        self._objects.setdefault(key, {})[(namespace, name)] = stored
        self._record(Change(rv, type_, key, namespace, name, copy.deepcopy(stored), old))
        return obj

    def delete(self, key: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            old = self._objects.get(key, {}).pop((namespace, name), None)
            if old is None:
                return None
            rv = self._next_rv()
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(rv)
            self._record(Change(rv, "DELETED", key, namespace, name, copy.deepcopy(gone), old))
            return gone

    # --- watch --------------------------------------------------------------------

    def subscribe(
        self, watcher: Watcher, since_rv: int | None
    ) -> tuple[list[Change], int, Callable[[], None]]:
        """Register `watcher` for every later change. Returns the recorded changes after
        `since_rv` (None: none), the current resourceVersion and the unsubscribe function.
        Raises LookupError when `since_rv` is older than the kept history."""
        with self.lock:
            backlog: list[Change] = []
            if since_rv is not None and since_rv < self._rv:
                oldest = self._history[0].rv if self._history else self._rv + 1
                if since_rv < oldest - 1:
                    raise LookupError(f"too old resource version: {since_rv} ({oldest - 1})")
                backlog = [c for c in self._history if c.rv > since_rv]
            self._watchers.append(watcher)

            def unsubscribe() -> None:
                with self.lock:
                    if watcher in self._watchers:
                        self._watchers.remove(watcher)

            return backlog, self._rv, unsubscribe

    def wait_for_change(self, after_rv: int, timeout: float) -> None:
        """Block until a write past `after_rv`, or `timeout` seconds."""
        with self.changed:
            if self._rv <= after_rv:
                self.changed.wait(timeout)
