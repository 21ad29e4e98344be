"""`conductor init NAME`: scaffold a new conductor (the reference's Example 1).

A project folder a person can run unchanged: `main.py` (the entry point,
`controller.run(Config(...))`), `manifests/<service>/` with Jinja2 templates for each chosen
service from a small catalogue (redis, postgresql, a generic web/api service), written in
the example app's style (a Service and a workload with probes and resources each, a PVC
and a Secret where the service keeps data, `protocol: TCP` spelled out for server-side
apply on 1.20), their defaults in `manifests/parameters.yaml`, a DeploymentParameters
object (`deploymentparameters.yaml`, for kubectl) and a README. The catalogue is data in
this module: one place to read what a scaffold contains.

It never overwrites: an existing target is refused with a structured error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller.errors import ConflictError, InvalidRequestError

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DEFAULT_SERVICES = ("redis", "postgresql", "api")

_HEAD = """apiVersion: {api}
kind: {kind}
metadata:
  name: {{{{ name }}}}
  namespace: {{{{ service.namespace }}}}
  labels:
    app.kubernetes.io/name: {{{{ name }}}}
"""

_SELECTOR = """    app.kubernetes.io/name: {{ name }}
    app.kubernetes.io/instance: {{ instance }}
"""


def _service(port_name: str, headless: bool = False) -> str:
    return _HEAD.format(api="v1", kind="Service") + (
        "spec:\n" + ("  clusterIP: None\n" if headless else "  type: ClusterIP\n")
        + "  selector:\n" + _SELECTOR
        + f"""  ports:
    - name: {port_name}
      port: {{{{ service.port }}}}
      protocol: TCP  # explicit: server-side apply on 1.20 needs it (list-map key)
      targetPort: {port_name}
""")


def _container(port_name: str, probes: str, extra: str = "") -> str:
    return f"""      containers:
        - name: {{{{ name }}}}
          image: "{{{{ service.image }}}}:{{{{ service.tag }}}}"
          imagePullPolicy: {{{{ service.imagePullPolicy }}}}
          ports:
            - name: {port_name}
              containerPort: {{{{ service.port }}}}
              protocol: TCP  # explicit: a list-map key for server-side apply
{extra}          env:
            - name: CONDUCTOR_SERVICE
              value: "{{{{ name }}}}"
{{%- for key, value in (service.env | default({{}})) | dictsort %}}
            - name: {{{{ key }}}}
              value: "{{{{ value }}}}"
{{%- endfor %}}
{probes}          resources:
            {{{{ service.resources | default({{}}) | toyaml(indent=12) }}}}
"""


def _workload(kind: str, comment: str, port_name: str, probes: str, *,
              replicas: str = "{{ service.replicas }}", extra: str = "",
              volumes: str = "", stateful: bool = False) -> str:
    return (f"{{#- {comment} -#}}\n" + _HEAD.format(api="apps/v1", kind=kind)
            + "spec:\n" + ("  serviceName: {{ name }}\n" if stateful else "")
            + f"  replicas: {replicas}\n  selector:\n    matchLabels:\n"
            + _SELECTOR.replace("    ", "      ", 2)
            + "  template:\n    metadata:\n      labels:\n"
            + _SELECTOR.replace("    ", "        ", 2)
            + "    spec:\n" + _container(port_name, probes, extra) + volumes)


def _probes(readiness: str, port_name: str, delay: int) -> str:
    return f"""          readinessProbe:
{readiness}            periodSeconds: 5
          livenessProbe:
            tcpSocket:
              port: {port_name}
            initialDelaySeconds: {delay}
            periodSeconds: 10
"""


@dataclass(frozen=True)
class Entry:
    """A service of the catalogue: its templates and default parameters."""

    files: dict[str, str]
    defaults: dict[str, Any]


REDIS = Entry({
    "deployment.yaml": _workload(
        "Deployment", "A cache: one replica, no persistence (losing it only costs warm-up).",
        "redis", _probes('            exec:\n              command: ["redis-cli", "-p", '
                         '"{{ service.port }}", "ping"]\n', "redis", 10),
        extra='          args: ["--port", "{{ service.port }}", "--save", "", '
              '"--appendonly", "no"]\n'),
    "service.yaml": _service("redis"),
}, {"image": "redis", "tag": "7.2", "port": 6379})

POSTGRESQL = Entry({
    "statefulset.yaml": _workload(
        "StatefulSet", "One database pod on a ReadWriteOnce claim: replicas stay 1.",
        "postgres", _probes(
            '            exec:\n              command: ["sh", "-c", "pg_isready -U '
            '\\"$POSTGRES_USER\\" -d \\"$POSTGRES_DB\\""]\n', "postgres", 30),
        replicas="1", stateful=True,
        extra="""          envFrom:
            - secretRef:
                name: {{ name }}
          volumeMounts:
            - name: data
              mountPath: /var/lib/postgresql/data
""",
        volumes="""      volumes:
        - name: data
          persistentVolumeClaim:
            claimName: {{ name }}-data
"""),
    "service.yaml": _service("postgres", headless=True),
    "pvc.yaml": "{#- A standalone claim: its size comes from the parameters, and it "
                "outlives the StatefulSet. -#}\n"
                + _HEAD.format(api="v1", kind="PersistentVolumeClaim").replace(
                    "name: {{ name }}\n  namespace", "name: {{ name }}-data\n  namespace", 1)
                + """spec:
  accessModes:
    - ReadWriteOnce
  resources:
    requests:
      storage: {{ service.storage }}
""",
    "secret.yaml": "{#- Set services.<name>.password in the parameters (or a secretKeyRef);"
                   " the default only suits a throwaway instance. -#}\n"
                   + _HEAD.format(api="v1", kind="Secret") + """type: Opaque
data:
  POSTGRES_DB: {{ service.database | b64enc }}
  POSTGRES_USER: {{ service.user | b64enc }}
  POSTGRES_PASSWORD: {{ service.password | default("conductor") | b64enc }}
  PGDATA: {{ "/var/lib/postgresql/data/pgdata" | b64enc }}
""",
}, {"image": "postgres", "tag": "16", "port": 5432, "database": "app", "user": "app",
    "storage": "1Gi", "resources": {"limits": {"memory": "512Mi"}}})

WEB = Entry({
    "deployment.yaml": _workload(
        "Deployment", "A stateless HTTP service: scale it with replicas.", "http",
        _probes("            tcpSocket:\n              port: http\n", "http", 10)),
    "service.yaml": _service("http"),
}, {"image": "nginx", "tag": "1.25", "port": 80, "replicas": 2})

CATALOGUE = {"redis": REDIS, "postgresql": POSTGRESQL, "postgres": POSTGRESQL,
             "web": WEB, "api": WEB, "frontend": WEB}

GLOBAL = {"namespace": "default", "replicas": 1, "imagePullPolicy": "IfNotPresent",
          "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                        "limits": {"memory": "256Mi"}}}

SHARED_NAMESPACE = """{#- Objects of no service: the namespace, unless it is "default". -#}
{% if global.namespace != "default" %}
apiVersion: v1
kind: Namespace
metadata:
  name: {{ global.namespace }}
{% endif %}
"""

MAIN = '''"""Run the {name} conductor: the reconcile loop and its REST API (:8081)."""

from pathlib import Path

import controller
from controller import Config

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    # Every other setting comes from CONDUCTOR_* variables (conductor config --list).
    base = Config.from_env()
    controller.run(Config.from_env(app_name="{name}", manifest_root=HERE / "manifests",
                                   instance=base.instance))
'''

README = """# {name}

A conductor scaffolded by `conductor init`: {services}.

- `manifests/<service>/`: Jinja2 templates of each service's objects (one folder per
  service; `_shared/` holds objects of no service). Templates see `service` (global
  overlaid with the service's own values), `global`, `services`, `name`, `instance`.
- `manifests/parameters.yaml`: the defaults. The controller creates its
  DeploymentParameters object from it on a first install; after that the object is the
  truth.
- `deploymentparameters.yaml`: the same as a DeploymentParameters object, for
  `kubectl apply -f` (the CRD comes with conductor's deploy kit, `config/crd`).
- `main.py`: the entry point, `controller.run(Config(...))`.

Run it against the cluster of your kubeconfig:

```sh
python main.py                                      # or:
conductor run --manifests manifests --app-name {name}
conductor health                                    # from another shell
conductor plan --patch '{{"services": {{"{first}": {{"replicas": 2}}}}}}'
```
"""


@dataclass(frozen=True)
class Scaffold:
    root: Path
    services: tuple[str, ...]
    files: tuple[Path, ...]


def plan_files(name: str, services: tuple[str, ...]) -> dict[str, str]:
    """Relative path -> content of every file of the scaffold."""
    if not NAME.match(name) or len(name) > 63:
        raise InvalidRequestError(f"invalid conductor name {name!r}: a DNS label "
                                  "(lowercase letters, digits, '-')", {"name": name})
    unknown = [s for s in services if s not in CATALOGUE]
    if unknown or not services:
        raise InvalidRequestError(
            f"unknown service(s): {', '.join(unknown) or '(none given)'}",
            {"unknown": unknown, "available": sorted(CATALOGUE)})
    if len(set(services)) != len(services):
        raise InvalidRequestError("a service is named twice", {"services": list(services)})
    files: dict[str, str] = {"manifests/_shared/namespace.yaml": SHARED_NAMESPACE}
    defaults: dict[str, Any] = {}
    for service in services:
        entry = CATALOGUE[service]
        for filename, text in entry.files.items():
            files[f"manifests/{service}/{filename}"] = text
        defaults[service] = dict(entry.defaults)
    params = {"global": GLOBAL, "services": defaults}
    files["manifests/parameters.yaml"] = (
        f"# Default parameters of {name}: a service sees `global` overlaid with its own\n"
        "# section (maps merge, anything else is replaced). Quote tags.\n"
        + yaml.safe_dump(params, sort_keys=False))
    files["deploymentparameters.yaml"] = yaml.safe_dump({
        "apiVersion": "conductor.io/v1alpha1", "kind": "DeploymentParameters",
        "metadata": {"name": "default", "namespace": "default"}, "spec": params},
        sort_keys=False)
    files["main.py"] = MAIN.format(name=name)
    files["README.md"] = README.format(name=name, services=", ".join(services),
                                       first=services[0])
    return files


def create(name: str, services: tuple[str, ...] = DEFAULT_SERVICES,
           directory: Path | None = None) -> Scaffold:
    """Write the scaffold into `directory` (default: ./NAME), which must not exist."""
    files = plan_files(name, services)
    root = directory if directory is not None else Path(name)
    if root.exists():
        raise ConflictError(f"{root} already exists: conductor init never overwrites",
                            {"path": str(root), "hint": "choose another --dir or name"})
    written = []
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return Scaffold(root, services, tuple(written))
