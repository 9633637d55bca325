"""The test ground: real kube-apiserver/etcd/kube-controller-manager, two MinIO "clouds", rclone and a real node."""
