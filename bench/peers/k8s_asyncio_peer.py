"""Benchmark peer: one candidate on `kubernetes_asyncio.leaderelection`, with GET /leader.

Same flags as the client-go peer and the same `{"is_leader": bool}` field as lease-sidecar, so
one harness measures all three. It uses the library as its documentation shows and adds nothing
to the election itself. What the library does (kubernetes-asyncio 36.x), as read from its source:

* No release: `LeaderElection` has no release step, so on SIGTERM this peer just stops and the
  lease stays with it until the standbys see it expire (a graceful handover costs a full lease
  duration plus up to one retry period).
* Wall-clock timing: lease expiry and the renew deadline are computed with `time.time()`, so a
  clock step (NTP) shortens or stretches both.
* The renew deadline is checked only between attempts and API calls carry no timeout of their
  own, so one hanging request can keep a leader "leading" past its deadline.
* The record times are naive local time written with a `Z` suffix (wrong unless TZ is UTC), and
  `leaderTransitions` is never incremented.
* Leadership is only reported through `onstarted_leading`/`onstopped_leading`; there is no
  callback for "someone else leads", so `role` below reads the elector's `observed_record`.
* Each attempt reads the Lease first, even while leading: a leader costs a GET and a PUT per retry
  period, a standby a GET per retry period (no jitter).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web
from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--lease-name", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--lease-duration", type=float, default=4.0, help="seconds")
    parser.add_argument("--renew-deadline", type=float, default=3.0, help="seconds")
    parser.add_argument("--retry-period", type=float, default=1.0, help="seconds")
    parser.add_argument("--http-address", default="127.0.0.1:4040")
    return parser.parse_args()


class Peer:
    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.leading = False
        self.election: leaderelection.LeaderElection | None = None

    def body(self) -> dict[str, object]:
        observed = self.election.observed_record if self.election else None
        holder = observed.holder_identity if observed else None
        role = "leader" if self.leading else ("standby" if observed else "unknown")
        return {"is_leader": self.leading, "role": role, "holder": holder, "identity": self.identity}

    async def get_leader(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self.body()), content_type="application/json")

    async def started(self) -> None:
        self.leading = True

    async def stopped(self) -> None:
        self.leading = False


async def main() -> None:
    args = parse_args()
    # The record stores whole seconds; the library writes str(lease_duration) and parses it with int().
    lease_duration: float = int(args.lease_duration) if args.lease_duration.is_integer() else args.lease_duration
    configuration = Configuration()
    await config.load_kube_config(config_file=args.kubeconfig, client_configuration=configuration)
    peer = Peer(args.identity)

    app = web.Application()
    app.router.add_get("/leader", peer.get_leader)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = args.http_address.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async with ApiClient(configuration=configuration) as api_client:
        lock = LeaseLock(args.lease_name, args.namespace, args.identity, api_client)

        async def contend() -> None:
            # run() returns once leadership is lost; contend again (the harness stops us).
            while True:
                peer.election = leaderelection.LeaderElection(electionconfig.Config(
                    lock, lease_duration, args.renew_deadline, args.retry_period,
                    onstarted_leading=peer.started, onstopped_leading=peer.stopped))
                await peer.election.run()

        election = asyncio.create_task(contend())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([election, stopper], return_when=asyncio.FIRST_COMPLETED)
        # Nothing to release: the library has no such step (see the module docstring).
        election.cancel()
        stopper.cancel()
        await asyncio.gather(election, stopper, return_exceptions=True)
        peer.leading = False
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
