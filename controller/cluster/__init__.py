"""A local Kubernetes control plane on loopback, for tests and the demo.

`building` prepares kube-apiserver and kube-controller-manager from Debian's source
package (once, cached); `running` starts and stops etcd + the API server + the controller
manager; `kubelet` is a plainly-labelled simulation of a kubelet for a cluster that has none.
"""
