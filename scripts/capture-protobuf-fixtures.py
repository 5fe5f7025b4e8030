#!/usr/bin/env python3
"""Capture the Kubernetes protobuf request bodies real kubectl sends, as test fixtures.

kubectl >= 1.31 sends the bodies of its typed `create` subcommands as
application/vnd.kubernetes.protobuf. This script starts a tiny plain-HTTP fake API server on
127.0.0.1, points a throwaway kubeconfig at it, runs each `kubectl create ...` below once for real
(the POST body is written to testdata/NAME.pb) and once with `--dry-run=client -o json` (the
client's own JSON of the same object, written to testdata/NAME.json). The decoder's tests assert
that decoding NAME.pb gives NAME.json.

Usage: scripts/capture-protobuf-fixtures.py [--kubectl PATH] [--out DIR]
Defaults: kubectl 1.33 from the Google Cloud SDK, apiserver/src/protobuf/testdata.
Python 3 standard library only.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_KUBECTL = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33"
DEFAULT_OUT = os.path.join(REPO, "apiserver", "src", "protobuf", "testdata")

# name -> kubectl arguments after `kubectl`. Each is created in namespace "default" (cluster-scoped
# kinds ignore it).
FIXTURES = {
    "namespace": ["create", "namespace", "team-a"],
    "configmap": ["create", "configmap", "app-config", "--from-literal=mode=prod",
                  "--from-literal=replicas=3"],
    "secret": ["create", "secret", "generic", "db-pass", "--from-literal=username=admin",
               "--from-literal=password=s3cr3t!"],
    "secret-docker-registry": ["create", "secret", "docker-registry", "regcred",
                               "--docker-server=registry.example.com",
                               "--docker-username=bot", "--docker-password=hunter2"],
    "deployment": ["create", "deployment", "web", "--image=busybox", "--replicas=3",
                   "--port=80"],
    "deployment-zero": ["create", "deployment", "idle", "--image=busybox", "--replicas=0"],
    "service": ["create", "service", "clusterip", "web", "--tcp=80:8080"],
    "service-nodeport": ["create", "service", "nodeport", "web-np", "--tcp=443:8443",
                         "--node-port=30443"],
    "job": ["create", "job", "once", "--image=busybox", "--", "echo", "hello"],
    "cronjob": ["create", "cronjob", "nightly", "--image=busybox", "--schedule=0 3 * * *",
                "--", "date"],
    "serviceaccount": ["create", "serviceaccount", "builder"],
    "role": ["create", "role", "pod-reader", "--verb=get", "--verb=list", "--resource=pods"],
    "clusterrole": ["create", "clusterrole", "node-reader", "--verb=get",
                    "--resource=nodes", "--non-resource-url=/healthz"],
    "rolebinding": ["create", "rolebinding", "read-pods", "--role=pod-reader",
                    "--user=alice", "--serviceaccount=default:builder"],
    "clusterrolebinding": ["create", "clusterrolebinding", "cluster-admins",
                           "--clusterrole=cluster-admin", "--user=root", "--group=admins"],
    "quota": ["create", "quota", "small", "--hard=cpu=1,memory=1Gi,pods=2",
              "--scopes=NotBestEffort"],
    "priorityclass": ["create", "priorityclass", "high", "--value=1000",
                      "--description=important workloads", "--preemption-policy=Never"],
    "priorityclass-zero": ["create", "priorityclass", "zero", "--value=0",
                           "--global-default=false"],
    "poddisruptionbudget": ["create", "poddisruptionbudget", "web-pdb",
                            "--selector=app=web", "--min-available=50%"],
    "poddisruptionbudget-int": ["create", "poddisruptionbudget", "db-pdb",
                                "--selector=app=db", "--max-unavailable=1"],
    "ingress": ["create", "ingress", "web", "--class=nginx",
                "--rule=example.com/api*=web:80,tls=web-tls",
                "--annotation=team=web"],
    # No --dry-run for tokens: only NAME.pb is written; the test spells out its JSON.
    "token": ["create", "token", "builder", "--duration=1h", "--audience=https://api.example"],
}
NO_DRY_RUN = {"token"}

# Discovery the fake server answers: group version -> [(resource, kind, namespaced)]. `kubectl
# create role|clusterrole` resolves --resource through it; nothing else needs it.
RESOURCES = {
    "v1": [("pods", "Pod", True), ("nodes", "Node", False), ("services", "Service", True),
           ("configmaps", "ConfigMap", True), ("secrets", "Secret", True),
           ("namespaces", "Namespace", False)],
    "apps/v1": [("deployments", "Deployment", True)],
    "batch/v1": [("jobs", "Job", True), ("cronjobs", "CronJob", True)],
    "rbac.authorization.k8s.io/v1": [("roles", "Role", True)],
    "networking.k8s.io/v1": [("ingresses", "Ingress", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "scheduling.k8s.io/v1": [("priorityclasses", "PriorityClass", False)],
}


def read_varint(buf, i):
    value, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def fields(buf):
    """Yield (tag, wire type, value) of one protobuf message; only what the server needs."""
    i = 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        tag, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 2:
            n, i = read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("unsupported wire type")
        yield tag, wt, v


def envelope(body):
    """(apiVersion, kind, name) of a k8s protobuf body, enough to answer the POST."""
    if not body.startswith(b"k8s\0"):
        return None
    api_version = kind = name = ""
    raw = b""
    for tag, _, v in fields(body[4:]):
        if tag == 1:
            for t2, _, v2 in fields(v):
                if t2 == 1:
                    api_version = v2.decode()
                elif t2 == 2:
                    kind = v2.decode()
        elif tag == 2:
            raw = v
    for tag, _, v in fields(raw):
        if tag == 1:  # metadata
            for t2, _, v2 in fields(v):
                if t2 == 1:
                    name = v2.decode()
    return api_version, kind, name


class Handler(BaseHTTPRequestHandler):
    captured = []  # (path, content type, body)

    def log_message(self, *args):
        pass

    def reply(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0]
        groups = [gv.split("/") for gv in RESOURCES if "/" in gv]
        gv = path.removeprefix("/api/").removeprefix("/apis/")
        if path == "/api":
            self.reply(200, {"kind": "APIVersions", "versions": ["v1"]})
        elif path == "/apis":
            self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                for g, v in groups]})
        elif gv in RESOURCES and path in (f"/api/{gv}", f"/apis/{gv}"):
            self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                             "resources": [{"name": r, "singularName": "", "kind": k,
                                            "namespaced": ns, "verbs": ["create", "get"]}
                                           for r, k, ns in RESOURCES[gv]]})
        else:
            self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "reason": "NotFound", "code": 404})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        Handler.captured.append((self.path, self.headers.get("Content-Type", ""), body))
        env = envelope(body) or ("v1", "Unknown", "unknown")
        obj = {"apiVersion": env[0], "kind": env[1],
               "metadata": {"name": env[2], "namespace": "default"}}
        if env[1] == "TokenRequest":
            obj["status"] = {"token": "fake", "expirationTimestamp": "2030-01-01T00:00:00Z"}
        self.reply(201, obj)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubectl", default=DEFAULT_KUBECTL)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("only", nargs="*", help="fixture names (default: all)")
    args = ap.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = os.path.join(tmp, "config")
        with open(kubeconfig, "w") as f:
            f.write(f"""apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {{server: "http://127.0.0.1:{port}"}}
users:
- name: fake
  user: {{token: fake}}
contexts:
- name: fake
  context: {{cluster: fake, user: fake, namespace: default}}
current-context: fake
""")
        env = dict(os.environ, KUBECONFIG=kubeconfig, HOME=tmp)
        failed = 0
        for name, argv in FIXTURES.items():
            if args.only and name not in args.only:
                continue
            Handler.captured.clear()
            run = subprocess.run([args.kubectl, *argv], env=env, capture_output=True, text=True)
            posts = [c for c in Handler.captured if c[2].startswith(b"k8s\0")]
            if run.returncode != 0 or len(posts) != 1:
                print(f"{name}: kubectl exited {run.returncode} with {len(posts)} protobuf "
                      f"POSTs: {run.stderr.strip()}", file=sys.stderr)
                failed += 1
                continue
            with open(os.path.join(args.out, f"{name}.pb"), "wb") as f:
                f.write(posts[0][2])
            print(f"{name}: POST {posts[0][0]} ({posts[0][1]}, {len(posts[0][2])} bytes)")
            if name in NO_DRY_RUN:
                continue
            dry = subprocess.run([args.kubectl, *argv[:_split(argv)], "--dry-run=client",
                                  "-o", "json", *argv[_split(argv):]],
                                 env=env, capture_output=True, text=True)
            if dry.returncode != 0:
                print(f"{name}: dry run failed: {dry.stderr.strip()}", file=sys.stderr)
                failed += 1
                continue
            with open(os.path.join(args.out, f"{name}.json"), "w") as f:
                json.dump(json.loads(dry.stdout), f, indent=2, sort_keys=True)
                f.write("\n")
    server.shutdown()
    return 1 if failed else 0


def _split(argv):
    """Index of `--` (the container command), so flags go before it."""
    return argv.index("--") if "--" in argv else len(argv)


if __name__ == "__main__":
    sys.exit(main())
