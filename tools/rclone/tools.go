//go:build tools

// Package tools pins the rclone binary built by tools/build.sh.
package tools

import (
	_ "github.com/rclone/rclone"
)
