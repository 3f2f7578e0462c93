// Package grafana holds the credmatrix Grafana dashboard
// (credmatrix.json) and the test that keeps it built on exactly the metric
// names the services and client library define (and docs/metrics.md
// documents).
package grafana
