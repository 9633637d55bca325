//go:build tools

// Package tools pins the MinIO server binary built by tools/build.sh.
package tools

import (
	_ "github.com/minio/minio"
)
