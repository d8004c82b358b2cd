#!/usr/bin/env bash
# Copy the files the Helm chart and the operator package ship from their single sources of
# truth (Helm and package data can only read files inside the chart or package directory):
#   crds/*.yaml               -> charts/graven-operator/crds/
#   monitoring/dashboard.json -> charts/graven-operator/files/dashboard.json
#   monitoring/rules.yaml     -> charts/graven-operator/files/rules.yaml
#   monitoring/rules.yaml     -> operator/rules.yaml (per-cluster PrometheusRule)
# tests/chart/test_sources_of_truth.py fails until the copies are identical.
set -euo pipefail
cd "$(dirname "$0")/.."
chart=charts/graven-operator

mkdir -p "$chart/crds" "$chart/files"
# Drop chart CRDs whose source is gone, then copy the current ones.
for f in "$chart"/crds/*.yaml; do
  [[ -e "$f" ]] || continue
  [[ -e "crds/$(basename "$f")" ]] || rm -v "$f"
done
for f in crds/*.yaml; do
  [[ -e "$f" ]] || continue
  cp -v "$f" "$chart/crds/"
done
cp -v monitoring/dashboard.json "$chart/files/dashboard.json"
cp -v monitoring/rules.yaml "$chart/files/rules.yaml"
cp -v monitoring/rules.yaml operator/rules.yaml
