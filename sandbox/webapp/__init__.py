"""A sample web service whose health, errors and latency follow the image versions a
Kubernetes Service (or the Service an Ingress's backend names) routes to, read from the
(fake) API server.

    behaviour.py  per-version behaviour config and tag conventions (pure)
    traffic.py    an Ingress's backend, routing, the health verdict and request counters (pure)
    app.py        the ASGI app and its traffic thread; the endpoints are listed there
    server.py     WebAppServer, running_webapp, start_detached/stop_detached
"""
