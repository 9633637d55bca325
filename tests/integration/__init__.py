"""Integration tier: tests against two real MinIO servers, verified by rclone."""
