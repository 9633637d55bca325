//go:build tools

// Package tools pins s5cmd, a peer the data-plane benchmark (bench/engine_vs_rclone.py) measures us against.
package tools

import (
	_ "github.com/peak/s5cmd/v2"
)
