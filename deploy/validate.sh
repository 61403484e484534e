#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s against the JSON schemas
# bundled with the PyPI package kubernetes-validate (no cluster, no network
# once the venv exists). Exits non-zero if any manifest is invalid, has an
# unknown kind/apiVersion, or contains no resource.
#
#   deploy/validate.sh              # every deploy/k8s/*.yaml but kustomization.yaml
#   deploy/validate.sh FILE...      # just these files
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-1.37.0}"
VALIDATOR_PKG="kubernetes-validate==1.37.0"
VENV="${TMPDIR:-/tmp}/bitnet-kubeval-venv"

here="$(cd "$(dirname "$0")" && pwd)"

if [[ ! -x "$VENV/bin/kubernetes-validate" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$VALIDATOR_PKG"
fi

if [[ $# -gt 0 ]]; then
    files=("$@")
else
    files=()
    for f in "$here"/k8s/*.yaml; do
        [[ "$(basename "$f")" == kustomization.yaml ]] && continue
        files+=("$f")
    done
fi
if [[ ${#files[@]} -eq 0 ]]; then
    echo "FAIL no manifests found under $here/k8s" >&2
    exit 1
fi

status=0
for f in "${files[@]}"; do
    # kubernetes-validate exits 0 when it has no schema for a kind (a WARN)
    # or when a file holds no resource, so check its output as well.
    if out="$("$VENV/bin/kubernetes-validate" --strict -k "$KUBE_VERSION" "$f" 2>&1)"; then
        rc=0
    else
        rc=$?
    fi
    printf '%s\n' "$out"
    if [[ $rc -ne 0 ]] || grep -q '^WARN' <<<"$out" || ! grep -q '^INFO .* passed' <<<"$out"; then
        echo "FAIL $f" >&2
        status=1
    fi
done

if [[ $status -eq 0 ]]; then
    echo "OK ${#files[@]} manifest(s) valid against Kubernetes $KUBE_VERSION (strict)"
fi
exit $status
