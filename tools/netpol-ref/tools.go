//go:build tools

// Keeps kube-network-policies' main package in this module's dependency
// graph, so `go mod tidy` records its requirements and `go build` finds it.
package tools

import (
	_ "sigs.k8s.io/kube-network-policies/cmd"
)
