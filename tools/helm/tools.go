//go:build tools

// Package tools pins the helm CLI that renders and lints charts/datamover (tools/render_manifests.py, tests).
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
