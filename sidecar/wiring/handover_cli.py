"""`lease-sidecar handover --lease NAME --to IDENTITY` (also `kubectl lease-handover`).

Exit codes: 0 the successor holds the lease (or the request was written, with `--timeout 0`),
1 it did not take it in time or the API failed, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from sidecar.core.config import ConfigError, parse_duration_s
from sidecar.wiring.settings import IN_CLUSTER_DIR, RunSettings, build_parser


def handover_main(args: argparse.Namespace) -> int:
    try:
        wait_s = 0.0 if str(args.timeout).strip() in ("0", "0s") else parse_duration_s(args.timeout, "--timeout")
        if not args.successor or len(args.successor) > 253 or any(c.isspace() for c in args.successor):
            raise ConfigError("--to", "must be a holder identity: 1 to 253 characters, no spaces")
        namespace = args.namespace or _default_namespace(args.kubeconfig)
    except ConfigError as error:
        print(f"lease-sidecar handover: {error}", file=sys.stderr)
        return 2
    from sidecar.kube.handover import HandoverError, request_handover, wait_for_holder
    from sidecar.wiring.app import CredentialsError, make_api_client

    async def go() -> int:
        client = await make_api_client(RunSettings(kubeconfig=args.kubeconfig))
        try:
            request = await request_handover(client, namespace, args.lease, args.successor, 5.0)
            if not request.strategy:
                how = "annotation lease-sidecar.io/handover-to; no spec.strategy, so no spec.preferredHolder"
            elif request.preferred_holder_kept:
                how = f"annotation and spec.preferredHolder, strategy {request.strategy}"
            else:
                how = "annotation; spec.preferredHolder dropped by the apiserver"
            print(f"asked {request.holder or '(nobody)'} to hand {namespace}/{args.lease} over to "
                  f"{args.successor} ({how})")
            if not wait_s:
                return 0
            holder, waited = await wait_for_holder(client, namespace, args.lease, args.successor, wait_s)
            if holder == args.successor:
                print(f"{args.successor} holds {namespace}/{args.lease} after {waited * 1000:.0f} ms")
                return 0
            print(f"{args.successor} does not hold {namespace}/{args.lease} after {wait_s:g}s "
                  f"(holder: {holder or 'nobody'})", file=sys.stderr)
            return 1
        finally:
            await client.close()

    try:
        return asyncio.run(go())
    except CredentialsError as error:
        print(f"lease-sidecar handover: {error}", file=sys.stderr)
        return 2
    except HandoverError as error:
        print(f"lease-sidecar handover: {error}", file=sys.stderr)
        return 1


def _default_namespace(kubeconfig: str) -> str:
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube" / "config")
    if os.path.isfile(path):
        from kubernetes_asyncio.config import kube_config

        try:
            _, active = kube_config.list_kube_config_contexts(config_file=path)
            namespace = (active or {}).get("context", {}).get("namespace")
            if namespace:
                return str(namespace)
        except Exception:  # an unreadable kubeconfig: make_api_client reports it in one line
            pass
    try:
        return (IN_CLUSTER_DIR / "namespace").read_text().strip() or "default"
    except OSError:
        return "default"


def kubectl_plugin() -> int:
    """`kubectl-lease_handover` on the PATH makes `kubectl lease-handover --lease X --to Y` work."""
    args = build_parser().parse_args(["handover", *sys.argv[1:]])
    return handover_main(args)
