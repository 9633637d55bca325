"""Control-plane tier: tests against the real kube-apiserver, etcd and kube-controller-manager."""
