"""Files the product reads at run time, shipped inside the package (importlib.resources).

- `crd/deploymentparameters.yaml`: the DeploymentParameters CRD, installed by
  `conductor run` when missing and also the parameters' OpenAPI schema;
- `gunicorn.conf.py`: the API server's gunicorn settings;
- `manifests/`: the example app, the default manifests root.

One copy of each: in a checkout these names are symlinks to the files the deploy kit and
the README use (config/crd/, config/gunicorn.conf.py, manifests/), because kustomize only
reads files under a kustomization's own folder. Building the wheel follows the symlinks, so
the installed package holds the content itself (tests/deploy/test_wheel.py checks it).
The package must be installed unzipped (pip always does): callers get real paths, which
gunicorn's settings loader and the manifests tree walk need.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def path(name: str) -> Path:
    """The file or folder `name` (slash-separated) of this package, as a filesystem path."""
    found = files(__name__).joinpath(*name.split("/"))
    if not isinstance(found, Path):  # a zip import: no real path to hand to gunicorn
        raise RuntimeError(f"conductor's package data {name!r} is not on the filesystem "
                           f"({found!r}); install the package unzipped")
    return found.resolve()  # in a checkout: the one real file behind the symlink


CRD = path("crd/deploymentparameters.yaml")
GUNICORN_CONF = path("gunicorn.conf.py")
MANIFESTS = path("manifests")
