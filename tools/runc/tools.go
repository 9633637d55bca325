//go:build tools

// Package tools pins runc, built by tools/build.sh with cgo and seccomp for the ground's real node.
package tools

import _ "github.com/opencontainers/runc"
