"""The sandbox's Kubernetes side: our fake API server, the sample web service, and the
objects production would have, in namespace `sandbox`:

- `api`, deployed rolling: Deployment `api` (an app container and a sidecar), Service `api`.
- `web`, blue-green by the live Service's selector: Deployment `web-blue`, live Service
  `web` (selects colour=blue), preview Service `web-preview` (colour=green).
- `admin` (SEV Fleet's admin portal), blue-green through an Ingress, as the seed runbook
  switches it (`kubectl apply -f kubernetes/ingress-green.yaml`): Deployment `admin-blue`,
  one Service per colour (`admin-blue`; the deploy creates `admin-green` as a copy of the
  live colour's Service, as `kubectl apply -f kubernetes/green/` would), preview Service
  `admin-preview` (colour=green) and Ingress `admin` whose backend is the live colour's
  Service. The sample web service answers for it at /ing/sandbox/admin/...
- Ingress `api` (host api.sandbox.local) in front of Service `api`, and the static
  maintenance page a maintenance switches it to, as the seed runbook's
  `kubectl apply -f kubernetes/maintenance-page.yaml` does: Deployment `maintenance-page`
  (1 replica of `sandbox/maintenance-page:v1`) and Service `maintenance-page`. The sample
  web service answers at /ing/sandbox/api/...: as `api` normally, with the page (503 "Down
  for maintenance", Retry-After) while the backend is `maintenance-page`.
- `orders`, deployed rolling, whose health is the health of the database it points at
  (`seed_orders`, once a PostgreSQL to point at runs): ConfigMap `orders-database` (PGHOST,
  PGPORT), Secret `orders-credentials` (PGUSER, PGPASSWORD, PGDATABASE), Deployment and
  Service `orders`; its pods read both at start, so a DR failover repoints the ConfigMap and
  restarts the Deployment. Namespace `sandbox-dr` has the same objects, scaled to 0.

Images follow the sample service's tag conventions (sandbox/webapp/behaviour.py):
`sandbox/app:v1` is good, `:v2-err8` fails 8% of requests, `:v2-bad-health` fails its
health check, `:v2-slow` is slow; the kubelet rules below make `:never-ready` never become
Ready and `:crash` crash-loop. An image whose repository ends with `maintenance-page` is
the static maintenance page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.kube import server as kube_server
from sandbox.webapp import server as webapp_server

NAMESPACE = "sandbox"
DR_NAMESPACE = "sandbox-dr"
ORDERS = "orders"
ORDERS_CONFIGMAP = "orders-database"
ORDERS_SECRET = "orders-credentials"
GOOD_IMAGE = "sandbox/app:v1"
API_INGRESS = "api"
API_HOST = "api.sandbox.local"
MAINTENANCE_PAGE = "maintenance-page"
MAINTENANCE_IMAGE = "sandbox/maintenance-page:v1"
IMAGE_RULES = {":*never-ready*": "NeverReady", ":*crash*": "CrashLoopBackOff", ":*bad-pull*": "ImagePullBackOff"}
PROGRESS_DEADLINE_SECONDS = 8  # short, so a bad rollout fails fast in the sandbox


@dataclass(frozen=True)
class ClusterInfo:
    kube_url: str
    kube_pid: int
    kubeconfig: Path
    webapp_url: str
    webapp_pid: int


def start(workdir: Path) -> ClusterInfo:
    kube = kube_server.start_detached(workdir / "kube", rules=IMAGE_RULES)
    try:
        seed(kube.kubeconfig)
        web = webapp_server.start_detached(
            workdir / "webapp", kubeconfig=kube.kubeconfig,
            # orders exists once seed_orders ran: until then the web service finds no Service.
            services=[f"{NAMESPACE}/{s}" for s in ("api", "web", "web-preview", "admin-preview", ORDERS)]
            + [f"{DR_NAMESPACE}/{ORDERS}"],
            ingresses=[f"{NAMESPACE}/{i}" for i in ("admin", API_INGRESS)], rate=40, window=5,
        )
    except BaseException:
        kube_server.stop_detached(workdir / "kube")
        raise
    return ClusterInfo(kube.url, kube.pid, kube.kubeconfig, web.url, web.pid)


def stop(workdir: Path) -> list[str]:
    actions = []
    if (workdir / "webapp").exists() and webapp_server.stop_detached(workdir / "webapp"):
        actions.append("stopped the sample web service")
    if (workdir / "kube").exists() and kube_server.stop_detached(workdir / "kube"):
        actions.append("stopped the Kubernetes API server")
    return actions


def _deployment(name: str, labels: dict[str, str], containers: list[dict[str, Any]], replicas: int,
                namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": dict(labels)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": containers}},
        },
    }


def _service(name: str, selector: dict[str, str], namespace: str = NAMESPACE) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }


def _ingress(name: str, host: str, service: str) -> dict[str, Any]:
    backend = {"service": {"name": service, "port": {"number": 80}}}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]},
    }


def seed(kubeconfig: Path) -> None:
    """Create what a deploy acts on, through the official client like any other user."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        app = {"name": "api", "image": GOOD_IMAGE, "ports": [{"containerPort": 8080}]}
        sidecar = {"name": "log-shipper", "image": "sandbox/log-shipper:1.4"}
        apps.create_namespaced_deployment(NAMESPACE, _deployment("api", {"app": "api"}, [app, sidecar], 3))
        core.create_namespaced_service(NAMESPACE, _service("api", {"app": "api"}))
        web = {"name": "web", "image": GOOD_IMAGE, "ports": [{"containerPort": 8080}]}
        apps.create_namespaced_deployment(NAMESPACE, _deployment("web-blue", {"app": "web", "colour": "blue"}, [web], 2))
        core.create_namespaced_service(NAMESPACE, _service("web", {"app": "web", "colour": "blue"}))
        core.create_namespaced_service(NAMESPACE, _service("web-preview", {"app": "web", "colour": "green"}))
        admin = {"name": "admin", "image": GOOD_IMAGE, "ports": [{"containerPort": 8080}]}
        apps.create_namespaced_deployment(
            NAMESPACE, _deployment("admin-blue", {"app": "admin", "colour": "blue"}, [admin], 2))
        core.create_namespaced_service(NAMESPACE, _service("admin-blue", {"app": "admin", "colour": "blue"}))
        core.create_namespaced_service(NAMESPACE, _service("admin-preview", {"app": "admin", "colour": "green"}))
        networking = client.NetworkingV1Api(api_client)
        networking.create_namespaced_ingress(NAMESPACE, _ingress("admin", "admin.sandbox.local", "admin-blue"))
        page = {"name": MAINTENANCE_PAGE, "image": MAINTENANCE_IMAGE, "ports": [{"containerPort": 8080}]}
        apps.create_namespaced_deployment(
            NAMESPACE, _deployment(MAINTENANCE_PAGE, {"app": MAINTENANCE_PAGE}, [page], 1))
        core.create_namespaced_service(NAMESPACE, _service(MAINTENANCE_PAGE, {"app": MAINTENANCE_PAGE}))
        networking.create_namespaced_ingress(NAMESPACE, _ingress(API_INGRESS, API_HOST, "api"))
    finally:
        api_client.close()


def seed_orders(kubeconfig: Path, *, host: str, port: int, user: str, password: str, dbname: str,
                replicas: int = 2, namespace: str = NAMESPACE, dr_namespace: str = DR_NAMESPACE) -> None:
    """Create `orders`, pointed at the database host:port, in `namespace` (with `replicas`)
    and in `dr_namespace` (scaled to 0, for a failover to bring up). Seeding again replaces
    the objects: the ConfigMap and Secret take the new values, which running pods see only
    after a restart. The namespaces are created if missing."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
        for ns, count in ((namespace, replicas), (dr_namespace, 0)):
            _create_or_replace(core.create_namespace, None, {"metadata": {"name": ns}})
            _create_or_replace(core.create_namespaced_config_map, core.replace_namespaced_config_map, {
                "metadata": {"name": ORDERS_CONFIGMAP, "namespace": ns},
                "data": {"PGHOST": host, "PGPORT": str(port)}}, ns)
            _create_or_replace(core.create_namespaced_secret, core.replace_namespaced_secret, {
                "metadata": {"name": ORDERS_SECRET, "namespace": ns}, "type": "Opaque",
                "stringData": {"PGUSER": user, "PGPASSWORD": password, "PGDATABASE": dbname}}, ns)
            container = {"name": ORDERS, "image": GOOD_IMAGE, "ports": [{"containerPort": 8080}],
                         "envFrom": [{"configMapRef": {"name": ORDERS_CONFIGMAP}},
                                     {"secretRef": {"name": ORDERS_SECRET}}]}
            _create_or_replace(apps.create_namespaced_deployment, apps.replace_namespaced_deployment,
                               _deployment(ORDERS, {"app": ORDERS}, [container], count, ns), ns)
            _create_or_replace(core.create_namespaced_service, None, _service(ORDERS, {"app": ORDERS}, ns), ns)
    finally:
        api_client.close()


def _create_or_replace(create: Any, replace: Any, body: dict[str, Any], namespace: str | None = None) -> None:
    """Create the object; if it exists, replace it (`replace` None: keep it as it is)."""
    from kubernetes.client.exceptions import ApiException

    try:
        if namespace is None:
            create(body)
        else:
            create(namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        if replace is not None:
            replace(body["metadata"]["name"], namespace, body)


def services_config(webapp_url: str, *, orders: bool = False) -> dict[str, Any]:
    """The `services` section of sandbox.yaml; `orders` once seed_orders made it."""
    def urls(kind: str, name: str) -> tuple[str, str]:
        base = f"{webapp_url}/{kind}/{NAMESPACE}/{name}"
        return f"{base}/health", f"{base}/metrics"

    api_health, api_metrics = urls("svc", "api")
    analysis = {"interval": "1s", "count": 3,
                "success": {"max_error_rate": 0.01, "max_latency_ms": 500},
                "failure": {"max_error_rate": 0.05, "max_latency_ms": 1000},
                "failure_limit": 0, "consecutive_error_limit": 2}

    def blue_green(name: str, live: tuple[str, str], **switch: str) -> dict[str, Any]:
        """A blue-green service entry; `live` is where its traffic is watched (health and
        metrics through the live Service or the Ingress), `switch` what the deploy switches."""
        preview_health, preview_metrics = urls("svc", f"{name}-preview")
        health, metrics = urls(*live)
        return {
            "namespace": NAMESPACE, "deployment": name, "container": name, "strategy": "blue-green",
            "image_repository": "sandbox/app", "rollout_timeout": "60s",
            "health_urls": [health], "metrics_url": metrics, "url": health,
            "analysis": analysis,
            "blue_green": {**switch, "preview_service": f"{name}-preview",
                           "preview_health_urls": [preview_health], "preview_metrics_url": preview_metrics,
                           "grace": "2s"},
        }

    admin = blue_green("admin", ("ing", "admin"), service="admin", ingress="admin")
    admin["smoke_checks"] = [{"name": "admin portal answers", "url": f"{webapp_url}/ing/{NAMESPACE}/admin/orders",
                              "expect_status": 200}]
    services: dict[str, Any] = {
        "api": {
            "namespace": NAMESPACE, "deployment": "api", "container": "api", "strategy": "rolling",
            "image_repository": "sandbox/app", "rollout_timeout": "60s",
            "health_urls": [api_health], "metrics_url": api_metrics, "url": api_health,
            "analysis": analysis,
            "smoke_checks": [{"name": "api answers", "url": f"{webapp_url}/svc/{NAMESPACE}/api/orders",
                              "expect_status": 200}],
        },
        "web": blue_green("web", ("svc", "web"), service="web"),
        "admin": admin,
    }
    if orders:
        health, _ = urls("svc", ORDERS)
        services[ORDERS] = {
            "namespace": NAMESPACE, "deployment": ORDERS, "container": ORDERS, "strategy": "rolling",
            "image_repository": "sandbox/app", "rollout_timeout": "60s",
            "health_urls": [health], "url": health,
        }
    return services
