//go:build tools

// Package tools pins the kwok provider's main package so `go mod tidy` keeps its dependencies.
package tools

import _ "sigs.k8s.io/karpenter/kwok"
