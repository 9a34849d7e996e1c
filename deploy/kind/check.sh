#!/usr/bin/env bash
# End-to-end check on a real cluster, on a machine with Docker, kind, kubectl and helm:
#   1. create a kind cluster (or reuse it), build the image and load it into the nodes;
#   2. helm install charts/lease-sidecar-example (3 replicas, native sidecar);
#   3. wait until exactly one pod reports `leader` (its role file) and holds the Lease;
#   4. delete that pod and time how long until another pod leads.
#
#   deploy/kind/check.sh                 # graceful delete: the sidecar releases the lease
#   FORCE=1 deploy/kind/check.sh         # --grace-period=0 --force: the lease must expire (TTL)
#   KEEP=1 deploy/kind/check.sh          # keep the cluster afterwards
#   CONTEXT=local SKIP_IMAGE=1 IMAGE=lease-sidecar:0.1.0 deploy/kind/check.sh
#                                        # any existing cluster (here the local node of
#                                        # `deploy/local/cluster up --node`): no kind, no docker
#
# Environment: CLUSTER (kind cluster name), NAMESPACE, RELEASE, IMAGE (repository:tag to build),
# TIMEOUT (seconds for each wait), FORCE, KEEP, CONTEXT (an existing kubectl context: kind is not
# used and nothing is created or deleted but the release), SKIP_IMAGE=1 (IMAGE is already on the
# nodes: neither build nor load it). A cluster that existed before is never deleted.
set -euo pipefail

CLUSTER=${CLUSTER:-lease-sidecar}
NAMESPACE=${NAMESPACE:-lease-sidecar-demo}
RELEASE=${RELEASE:-demo}
IMAGE=${IMAGE:-lease-sidecar:kind}
TIMEOUT=${TIMEOUT:-180}
FORCE=${FORCE:-0}
KEEP=${KEEP:-0}
SKIP_IMAGE=${SKIP_IMAGE:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHART="$ROOT/charts/lease-sidecar-example"
USE_KIND=1
if [[ -n ${CONTEXT:-} ]]; then
    USE_KIND=0
else
    CONTEXT="kind-$CLUSTER"
fi
LEASE="$RELEASE-leader" # the chart's default lease name
CREATED_CLUSTER=0

say() { printf '[kind-check] %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
k() { kubectl --context "$CONTEXT" --namespace "$NAMESPACE" "$@"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

cleanup() {
    local status=$?
    if ((status != 0)) && kubectl config get-contexts "$CONTEXT" >/dev/null 2>&1; then
        say "diagnostics:"
        k get pods -o wide >&2 || true
        k get lease "$LEASE" -o yaml >&2 || true
        k logs --selector "app.kubernetes.io/instance=$RELEASE" --all-containers --prefix --tail=20 >&2 || true
    fi
    if ((CREATED_CLUSTER == 1)) && [[ $KEEP != 1 ]]; then
        say "deleting kind cluster $CLUSTER (KEEP=1 keeps it)"
        kind delete cluster --name "$CLUSTER" >&2 || true
    fi
    exit "$status"
}
trap cleanup EXIT

tools=(kubectl helm awk)
if ((USE_KIND == 1)); then tools+=(kind); fi
if ((SKIP_IMAGE != 1)); then tools+=(docker); fi
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done

if ((USE_KIND == 0)); then
    kubectl config get-contexts "$CONTEXT" >/dev/null 2>&1 || die "no kubectl context $CONTEXT"
    say "using the existing cluster of context $CONTEXT"
elif kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    say "reusing kind cluster $CLUSTER"
else
    say "creating kind cluster $CLUSTER"
    CREATED_CLUSTER=1
    kind create cluster --name "$CLUSTER" --wait 120s
fi

if ((SKIP_IMAGE == 1)); then
    say "using $IMAGE as the nodes already have it"
else
    ((USE_KIND == 1)) || die "SKIP_IMAGE=1 is needed with CONTEXT: load $IMAGE into the cluster's nodes yourself"
    say "building $IMAGE"
    docker build --tag "$IMAGE" --build-arg REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" "$ROOT"
    kind load docker-image "$IMAGE" --name "$CLUSTER"
fi

say "installing $CHART as $RELEASE in $NAMESPACE"
helm dependency build "$CHART" >/dev/null
helm upgrade --install "$RELEASE" "$CHART" --kube-context "$CONTEXT" --namespace "$NAMESPACE" \
    --create-namespace --wait --timeout "${TIMEOUT}s" \
    --set "lease-sidecar.image.repository=${IMAGE%:*}" \
    --set "lease-sidecar.image.tag=${IMAGE##*:}" \
    --set "lease-sidecar.image.pullPolicy=Never" \
    --set "image.repository=${IMAGE%:*}" \
    --set "image.tag=${IMAGE##*:}" \
    --set "image.pullPolicy=Never"
k rollout status "deployment/$RELEASE-lease-sidecar-example" --timeout "${TIMEOUT}s" >&2

# Prints the names of the running pods whose role file says `leader`, one per line.
leaders() {
    local pod role
    for pod in $(k get pods --selector "app.kubernetes.io/instance=$RELEASE" \
        --field-selector status.phase=Running --output name); do
        role=$(k exec "$pod" --container app -- cat /var/run/lease-sidecar/role 2>/dev/null || true)
        if [[ $role == leader ]]; then
            printf '%s\n' "${pod#pod/}"
        fi
    done
}

holder() { k get lease "$LEASE" --output 'jsonpath={.spec.holderIdentity}' 2>/dev/null || true; }

# Waits until exactly one pod leads, that pod holds the Lease and (if given) it is not $1.
wait_for_one_leader() {
    local not=${1:-} deadline=$((SECONDS + TIMEOUT)) found count
    while ((SECONDS < deadline)); do
        found=$(leaders)
        count=$(grep -c . <<<"$found" || true)
        if ((count == 1)) && [[ $found != "$not" && $(holder) == "$found" ]]; then
            printf '%s\n' "$found"
            return 0
        fi
        ((count > 1)) && die "more than one leader: $(tr '\n' ' ' <<<"$found")"
        sleep 0.2
    done
    die "no single leader within ${TIMEOUT}s (leaders: $(tr '\n' ' ' <<<"$found"))"
}

leader=$(wait_for_one_leader)
say "exactly one leader: $leader (Lease $NAMESPACE/$LEASE)"

if [[ $FORCE == 1 ]]; then
    say "force-deleting $leader: nobody releases the lease, the others wait for it to expire"
    delete_flags=(--grace-period=0 --force)
else
    say "deleting $leader: its sidecar releases the lease on SIGTERM"
    delete_flags=()
fi
started=$(now)
k delete pod "$leader" --wait=false "${delete_flags[@]}" >&2
successor=$(wait_for_one_leader "$leader")
took=$(elapsed "$started" "$(now)")
say "failover: $leader -> $successor in ${took}s"

k logs "$successor" --container app --tail=3 >&2
k rollout status "deployment/$RELEASE-lease-sidecar-example" --timeout "${TIMEOUT}s" >&2
say "OK"
