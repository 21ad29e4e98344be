"""A local Kubernetes control plane on loopback, for tests, benchmarks and the demo.

Not part of the product: it is left out of the wheel and the image. `building` prepares
kube-apiserver and kube-controller-manager from Debian's source package (once, cached);
`running` starts and stops etcd + the API server + the controller manager; `kubelet` is a
plainly-labelled simulation of a kubelet for a cluster that has none; `commands` is the
command line (`python -m devcluster up|down|env|prepare`, also `conductor cluster ...` in a
checkout). It builds on the product (`controller.adapters.kube`), never the other way round.
"""
