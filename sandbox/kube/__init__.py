"""A fake Kubernetes API server for tests and the sandbox, on real HTTP.

The official Python client and kubectl work against it through a kubeconfig. It stores
objects with uid, resourceVersion and generation, answers list/watch with selectors,
applies the three patch types, and runs a deployment controller, a replica set
controller, a job controller and a fake kubelet whose pods follow image rules.

    store.py       objects, the resourceVersion counter, watch fan-out
    registry.py    create/update/patch/delete semantics, GC by ownerReferences
    resources.py   the kinds served, defaulting and validation
    selectors.py   label and field selectors          (pure)
    patch.py       strategic merge, JSON merge, JSON patch (pure)
    rollout.py     the deployment controller's arithmetic (pure)
    rules.py       image rules for the fake kubelet    (pure)
    controllers.py deployments, replica sets, autoscalers
    kubelet.py     scheduling, pod lifecycle, logs
    jobs.py        the job controller
    cluster.py     the loop that runs them
    api.py, discovery.py, tables.py, openapi.py   the HTTP API
    protobuf.py    kubectl's protobuf request bodies, decoded to JSON
    server.py      KubeServer, running_server, start_detached/stop_detached
                   (on sandbox/httpserver.py, which the sample web service shares)
"""
