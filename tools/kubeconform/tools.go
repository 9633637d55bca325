//go:build tools

// Package tools pins kubeconform, which validates the rendered chart against offline JSON schemas in the tests.
package tools

import (
	_ "github.com/yannh/kubeconform/cmd/kubeconform"
)
