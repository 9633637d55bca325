//go:build tools

// Package tools pins the fake-gcs-server binary (the test ground's Google Cloud Storage) built by tools/build.sh.
package tools

import (
	_ "github.com/fsouza/fake-gcs-server"
)
