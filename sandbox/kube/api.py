"""The HTTP face of the fake cluster: a Starlette app speaking the Kubernetes REST API.

Paths: /api/v1/... and /apis/GROUP/VERSION/... with namespaces/NS/PLURAL[/NAME[/SUB]],
cluster-wide PLURAL lists, the legacy /watch/ prefix, discovery, /version, health checks,
and the sandbox's own /sandbox/image-rules. Errors are Status objects. Watches are
chunked streams of {"type", "object"} lines fed by the store's watcher callbacks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import AsyncIterator, Mapping
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from sandbox.kube import discovery, errors, openapi, protobuf, resources, tables
from sandbox.kube.cluster import Cluster
from sandbox.kube.resources import Resource
from sandbox.kube.store import Change

log = logging.getLogger(__name__)
DEFAULT_WATCH_TIMEOUT = 1800
PODS = resources.storage_resource("Pod")
_CLOSE = object()


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json"
    )


def _flag(value: str | None) -> bool:
    return value in ("true", "1", "True")


class KubeApi:
    def __init__(self, cluster: Cluster, *, token: str | None = None) -> None:
        self.cluster = cluster
        self.registry = cluster.registry
        self.token = token
        self.closing = False
        self.api_errors: list[str] = []
        self._watches: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = set()
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        self.app = Starlette(routes=[Route("/{path:path}", self.dispatch, methods=methods)])

    def close_streams(self) -> None:
        """End every open watch and log stream, so the server can shut down."""
        self.closing = True
        for loop, queue in list(self._watches):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, _CLOSE)
            except RuntimeError:  # the loop is already closed
                pass

    # --- routing ------------------------------------------------------------------

    async def dispatch(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except errors.ApiError as exc:
            return _json(exc.status(), exc.code)
        except Exception as exc:  # noqa: BLE001 - a bug answers with a Status, and tests see it in api_errors
            self.api_errors.append(f"{request.method} {request.url}: {traceback.format_exc()}")
            log.exception("sandbox API server failed on %s %s", request.method, request.url)
            return _json(errors.ApiError(f"internal error in the sandbox API server: {exc!r}").status(), 500)

    async def _dispatch(self, request: Request) -> Response:
        path = "/" + request.url.path.strip("/")
        if path in ("/healthz", "/livez", "/readyz"):
            return PlainTextResponse("ok")
        if self.token is not None and request.headers.get("authorization") != f"Bearer {self.token}":
            raise errors.Unauthorized("Unauthorized")
        if path == "/version":
            return _json(discovery.SERVER_VERSION)
        if path == "/api":
            return _json(discovery.api_versions(request.headers.get("host", "")))
        if path == "/apis":
            return _json(discovery.api_group_list())
        if path.startswith("/openapi/"):
            return _json(openapi.document(path, request.query_params))
        if path == "/sandbox/image-rules":
            return await self._image_rules(request)
        segments = path.strip("/").split("/")
        if segments[0] == "api" and len(segments) >= 2:
            group, version, rest = "", segments[1], segments[2:]
        elif segments[0] == "apis" and len(segments) >= 2:
            if segments[1] not in resources.GROUP_VERSIONS or not segments[1]:
                raise errors.NotFound("the server could not find the requested resource")
            if len(segments) == 2:
                return _json(discovery.api_group(segments[1]))
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            raise errors.NotFound("the server could not find the requested resource")
        if not rest:
            listing = discovery.resource_list(group, version)
            if listing is None:
                raise errors.NotFound("the server could not find the requested resource")
            return _json(listing)
        return await self._resource(request, group, version, rest)

    async def _resource(self, request: Request, group: str, version: str, rest: list[str]) -> Response:
        watch = rest[0] == "watch"
        if watch:
            rest = rest[1:]
        namespace: str | None = None
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and (r := resources.find(group, version, rest[2]))
            and r.namespaced
        ):
            res: Resource | None = r
            namespace, tail = rest[1], rest[3:]
        else:
            res, tail = (resources.find(group, version, rest[0]) if rest else None), rest[1:]
        if res is None or len(tail) > 2 or (res.namespaced and tail and namespace is None):
            raise errors.NotFound("the server could not find the requested resource")
        name = tail[0] if tail else None
        sub = tail[1] if len(tail) > 1 else None
        if sub is not None and sub not in res.subresources:
            raise errors.NotFound("the server could not find the requested resource")
        q = request.query_params
        method = request.method
        dry_run = "All" in q.getlist("dryRun")
        if name is None:
            if method == "GET":
                if watch or _flag(q.get("watch")):
                    return self._watch(
                        res, namespace, q, as_table="as=Table" in request.headers.get("accept", "")
                    )
                listing = self.registry.list(
                    res,
                    namespace,
                    q.get("labelSelector"),
                    q.get("fieldSelector"),
                    int(q.get("limit") or 0) or None,
                    q.get("continue"),
                    readonly=True,
                )
                return self._maybe_table(request, res, listing)
            if method == "POST":
                if res.namespaced and namespace is None:
                    raise errors.MethodNotSupported(f"create of {res.plural} needs a namespace in the path")
                body = await self._body(request)
                return _json(self.registry.create(res, namespace or "", body, dry_run=dry_run), 201)
            if method == "DELETE":
                listing = self.registry.list(res, namespace, q.get("labelSelector"), q.get("fieldSelector"))
                for item in listing["items"]:
                    meta = item["metadata"]
                    self.registry.delete(res, meta.get("namespace", ""), meta["name"], dry_run=dry_run)
                return _json(listing)
            raise errors.MethodNotSupported(f"{method} is not supported on the {res.plural} collection")
        ns = namespace or ""
        if sub == "log":
            if method != "GET":
                raise errors.MethodNotSupported("pods/log supports GET only")
            return self._logs(ns, name, q)
        if method == "GET":
            if sub == "scale":
                return _json(self.registry.get_scale(res, ns, name))
            return self._maybe_table(request, res, self.registry.get(res, ns, name))
        if method == "PUT":
            return _json(
                self.registry.update(
                    res, ns, name, await self._body(request), subresource=sub, dry_run=dry_run
                )
            )
        if method == "PATCH":
            content_type = request.headers.get("content-type", "").split(";")[0].strip()
            body = await self._body(request, yaml_ok=content_type == "application/apply-patch+yaml")
            obj, created = self.registry.patch(
                res, ns, name, content_type, body, subresource=sub, dry_run=dry_run
            )
            return _json(obj, 201 if created else 200)
        if method == "DELETE":
            options = await self._body(request, empty_ok=True) or {}
            propagation = q.get("propagationPolicy") or options.get("propagationPolicy")
            dry_run = dry_run or "All" in (options.get("dryRun") or [])
            gone = self.registry.delete(
                res,
                ns,
                name,
                propagation=propagation,
                preconditions=options.get("preconditions"),
                dry_run=dry_run,
            )
            if res.kind == "Pod":
                return _json(gone)
            return _json(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": name,
                        "group": res.group,
                        "kind": res.plural,
                        "uid": gone["metadata"]["uid"],
                    },
                }
            )
        raise errors.MethodNotSupported(f"{method} is not supported on {res.plural}")

    async def _body(self, request: Request, *, yaml_ok: bool = False, empty_ok: bool = False) -> Any:
        content_type = request.headers.get("content-type", "")
        raw = await request.body()
        if content_type.startswith("application/vnd.kubernetes.protobuf"):
            # kubectl's typed commands (create namespace/deployment/job/..., autoscale)
            return protobuf.decode(raw)
        if "cbor" in content_type:
            raise errors.UnsupportedMediaType(
                f"the sandbox API server reads JSON, YAML and protobuf bodies, not {content_type}"
            )
        if not raw.strip():
            if empty_ok:
                return None
            raise errors.BadRequest("the request needs a body")
        try:
            return yaml.safe_load(raw) if yaml_ok else json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.BadRequest(f"the body is not valid {'YAML' if yaml_ok else 'JSON'}: {exc}") from None

    def _maybe_table(self, request: Request, res: Resource, body: dict[str, Any]) -> Response:
        if "as=Table" in request.headers.get("accept", ""):
            return _json(tables.table(res, body, include_object=request.query_params.get("includeObject")))
        return _json(body)

    # --- watch --------------------------------------------------------------------

    def _watch(
        self, res: Resource, namespace: str | None, q: Mapping[str, str], *, as_table: bool = False
    ) -> Response:
        convert = self.registry.watch_filter(res, namespace, q.get("labelSelector"), q.get("fieldSelector"))
        rv_text = q.get("resourceVersion") or ""
        send_initial = _flag(q.get("sendInitialEvents"))
        bookmarks = _flag(q.get("allowWatchBookmarks"))
        timeout = float(q.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        if rv_text and not rv_text.isdigit():
            raise errors.BadRequest(f"invalid resource version {rv_text!r}")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def on_change(change: Change) -> None:
            event = convert(change)
            if event is not None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, event)
                except RuntimeError:  # the server's loop has closed
                    pass

        store = self.cluster.store
        initial: list[dict[str, Any]] = []
        with store.lock:
            if send_initial or rv_text in ("", "0"):
                listing = self.registry.list(
                    res, namespace, q.get("labelSelector"), q.get("fieldSelector"), readonly=True
                )
                initial = [{"type": "ADDED", "object": item} for item in listing["items"]]
                _, current_rv, unsubscribe = store.subscribe(on_change, None)
            else:
                try:
                    backlog, current_rv, unsubscribe = store.subscribe(on_change, int(rv_text))
                except LookupError as exc:
                    gone = errors.Gone(str(exc)).status()
                    return StreamingResponse(
                        _once(json.dumps({"type": "ERROR", "object": gone}) + "\n"),
                        media_type="application/json",
                    )
                initial = [e for e in (convert(c) for c in backlog) if e is not None]
        entry = (loop, queue)
        self._watches.add(entry)

        first = [True]

        def encode(event: dict[str, Any]) -> bytes:
            if as_table:
                # `kubectl get -w` asks for Table rows; the column definitions come once.
                table = tables.table(res, event["object"], include_object=q.get("includeObject"))
                if not first[0]:
                    table["columnDefinitions"] = []
                first[0] = False
                event = {"type": event["type"], "object": table}
            return (json.dumps(event, separators=(",", ":")) + "\n").encode()

        async def stream() -> AsyncIterator[bytes]:
            try:
                for event in initial:
                    yield encode(event)
                if send_initial and bookmarks:
                    mark = {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": res.kind,
                            "apiVersion": res.api_version,
                            "metadata": {
                                "resourceVersion": str(current_rv),
                                "annotations": {"k8s.io/initial-events-end": "true"},
                            },
                        },
                    }
                    yield (json.dumps(mark) + "\n").encode()
                deadline = loop.time() + timeout
                while not self.closing:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        event = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                    if event is _CLOSE:
                        break
                    yield encode(event)
            finally:
                unsubscribe()
                self._watches.discard(entry)

        return StreamingResponse(stream(), media_type="application/json")

    # --- logs ---------------------------------------------------------------------

    def _logs(self, namespace: str, name: str, q: Mapping[str, str]) -> Response:
        pod = self.registry.get(PODS, namespace, name)
        names = [c["name"] for c in pod["spec"].get("containers") or []]
        container = q.get("container")
        if container is None:
            if len(names) != 1:
                raise errors.BadRequest(
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
                )
            container = names[0]
        elif container not in names:
            raise errors.BadRequest(f"container {container} is not valid for pod {name}")
        previous = _flag(q.get("previous"))
        text = self._tail(self.cluster.kubelet.logs(pod, container, previous=previous), q)
        if not _flag(q.get("follow")):
            return PlainTextResponse(text)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        entry = (loop, queue)
        self._watches.add(entry)

        async def follow() -> AsyncIterator[bytes]:
            sent = text
            try:
                yield sent.encode()
                while not self.closing:
                    try:
                        if await asyncio.wait_for(queue.get(), self.cluster.tick * 4) is _CLOSE:
                            break
                    except TimeoutError:
                        pass
                    current = self.registry.try_get(PODS, namespace, name)
                    if current is None or current["metadata"]["uid"] != pod["metadata"]["uid"]:
                        break
                    try:
                        now_text = self.cluster.kubelet.logs(current, container, previous=previous)
                    except errors.ApiError:
                        break
                    if now_text.startswith(sent) and len(now_text) > len(sent):
                        yield now_text[len(sent) :].encode()
                        sent = now_text
                    if (current.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                        break
            finally:
                self._watches.discard(entry)

        return StreamingResponse(follow(), media_type="text/plain")

    @staticmethod
    def _tail(text: str, q: Mapping[str, str]) -> str:
        tail = q.get("tailLines")
        if tail is not None and tail.lstrip("-").isdigit() and int(tail) >= 0:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail) :]) if int(tail) else ""
        limit = q.get("limitBytes")
        if limit is not None and limit.isdigit():
            text = text[: int(limit)]
        return text

    # --- sandbox ------------------------------------------------------------------

    async def _image_rules(self, request: Request) -> Response:
        if request.method == "GET":
            return _json(self.cluster.rules.to_json())
        if request.method not in ("POST", "PUT"):
            raise errors.MethodNotSupported(
                "GET the image rules, or POST/PUT {'rules': {...}, 'defaults': true, 'merge': false}"
            )
        body = await self._body(request)
        if not isinstance(body, Mapping) or not isinstance(body.get("rules"), Mapping):
            raise errors.BadRequest(
                "send {'rules': {IMAGE_PATTERN: OUTCOME, ...}}, optionally with 'defaults' and 'merge' (booleans)"
            )
        unknown = set(body) - {"rules", "defaults", "merge"}
        if unknown:
            raise errors.BadRequest(f"unknown keys {sorted(unknown)}; allowed: rules, defaults, merge")
        try:
            rules = self.cluster.set_rules(
                body["rules"], default_rules=body.get("defaults", True), merge=body.get("merge", False)
            )
        except ValueError as exc:
            raise errors.BadRequest(str(exc)) from None
        return _json(rules.to_json())


async def _once(text: str) -> AsyncIterator[bytes]:
    yield text.encode()
