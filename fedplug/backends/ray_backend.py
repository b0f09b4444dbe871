"""The Ray backend: a round's clients spread over Ray actors, each running the sequential or vectorized backend.

Ray (https://www.ray.io; Moritz et al., "Ray: A Distributed Framework for Emerging AI Applications",
OSDI 2018) places the workers on a cluster's nodes, restarts a worker whose process dies and re-runs
its call (`max_restarts=-1`, `max_task_retries=-1`), and manages the cluster; fedplug keeps only the
rounds. Design, and why:

- Workers (ray_worker.py) are `ray.num_workers` actors, each with `ray.cpus_per_worker` CPUs and
  `ray.gpus_per_worker` GPUs, one model and an inner backend (`ray.inner`).
- Data: each worker builds it itself from its node's cache (`fedplug.data.build_data`: generated or
  downloaded once per node, checked against its checksums), not through Ray's object store. The
  data set is the largest thing in a run and fixed; read from the node's disk it costs the driver
  no upload at start and no copy per worker process beyond its own, and the checksums make every
  node's copy the same. Only what changes travels: per round, the global model and the plug-ins'
  broadcast tensors go into the object store once (`ray.put`) and every worker reads that one copy.
- Assignment: the round's sampled clients (sorted) are cut into `num_workers` contiguous blocks of
  nearly equal size, block w to worker w; evaluation cuts all clients the same way. A fixed rule,
  so two runs with the same worker count do the same arithmetic, bit for bit.
- Order: the driver waits for every block, then yields the uploads in sampled order, one per
  client. The driver's aggregation (the streaming mean, robust rules that need every upload,
  plug-ins' extras and `transform_uploads`) therefore sees exactly what the sequential backend
  gives it: with `ray.inner sequential` the run is the sequential run bit for bit. (No partial sums
  on the workers: an LR upload is a few KB, and the uploads in order keep every plug-in working.)
- Per-client state (kept tensors such as FedBN's, plug-in states such as SCAFFOLD's c_i) is owned by
  the driver, next to the checkpoint that saves it, and travels with the call that uses it: a
  worker gets the state of its block's clients with the call and returns it updated with the
  uploads. Workers hold nothing between calls, so a worker lost and restarted (or a call re-run)
  loses nothing, and a checkpoint is the driver's dicts, as in the sequential backend.
- Faults: a killed worker process is restarted by Ray and its call re-run, with the same result.
  A cluster that no longer has room for every worker (a node gone and not replaced) for
  `ray.lost_timeout` seconds, or one whose head does not answer, raises BackendLost: the
  simulation then writes a checkpoint of the last finished round and stops with one line.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Iterator

from torch import nn

from fedplug.backends.ray_worker import DataFactory, RayWorker, from_wire, to_wire, unpack_uploads
from fedplug.backends.sequential import SequentialBackend
from fedplug.config import ConfigNode
from fedplug.core.compose import Plan
from fedplug.core.messages import Upload
from fedplug.core.params import Params
from fedplug.device import to_device
from fedplug.data.federated import FederatedData
from fedplug.errors import BackendLost, UserError

logger = logging.getLogger("fedplug")
POLL_S = 1.0  # how often a waiting driver checks that the cluster can still host every worker


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("federate.backend ray needs Ray: pip install 'fedplug[ray]'") from None
    return ray


def blocks(items: list[int] | range, count: int) -> list[Any]:
    """`items` cut into `count` contiguous blocks, the first ones one longer when it does not divide."""
    size, extra = divmod(len(items), count)
    out, start = [], 0
    for w in range(count):
        stop = start + size + (w < extra)
        out.append(items[start:stop])
        start = stop
    return out


def check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers at, refused in one line: `ray.init` would retry it for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # empty (a local Ray), `auto`, or a Ray Client URL: Ray says itself, at once
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise UserError(f"federate.backend ray: nothing answers at ray.address {address} ({error}); start the "
                        f"cluster's head there (`ray start --head`) or give its address") from None


class RayBackend:
    """The backend interface of SequentialBackend; its per-client stores are the driver's copy of every client."""

    def __init__(self, cfg: ConfigNode, model: nn.Module, plan: Plan, data: FederatedData,
                 data_factory: DataFactory | None = None) -> None:
        self.ray = import_ray()
        self.cfg, self.num_clients = cfg, data.num_clients
        self.local = SequentialBackend(cfg, model, plan, data)  # shared names, client stores; never trains
        self.per_client_eval = self.local.per_client_eval
        self.address = cfg.ray.address or "a local Ray"
        self.started_ray = False
        if not self.ray.is_initialized():
            check_reachable(cfg.ray.address)
            # Ray's coming default (it no longer hides GPUs from actors reserving none): ray_worker.py decides
            os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
            try:
                # Empty is `local`, not None: None would join whatever RAY_ADDRESS or the machine's last
                # `ray start` (/tmp/ray/ray_current_cluster, even a dead one) names; `auto` asks for that.
                self.ray.init(address=cfg.ray.address or "local", include_dashboard=False, log_to_driver=False,
                              logging_level=logging.WARNING)
            except Exception as error:  # noqa: BLE001  (ConnectionError, ValueError, RuntimeError: all one line)
                raise UserError(f"federate.backend ray: cannot start or join Ray at {self.address}: "
                                f"{_first_line(error)}") from None
            self.started_ray = True
        if not cfg.ray.address:
            self.address = f"{self.ray.get_runtime_context().gcs_address} (local)"
        opts = cfg.ray
        threads = cfg.threads if cfg.threads > 0 else max(1, int(opts.cpus_per_worker))
        # FEDPLUG_* variables (the cache folder, failpoints) reach the workers as the driver has them.
        env = {k: v for k, v in os.environ.items() if k.startswith("FEDPLUG_")}
        actor = self.ray.remote(num_cpus=opts.cpus_per_worker, num_gpus=opts.gpus_per_worker, max_restarts=-1,
                                max_task_retries=-1, **({"runtime_env": {"env_vars": env}} if env else {}))(RayWorker)
        self.workers = [actor.remote(w, cfg.to_dict(), threads, data_factory) for w in range(opts.num_workers)]
        failures = [f for f in self._wait([w.ready.remote() for w in self.workers]) if f]
        if failures:  # a bad config, a plug-in or data missing on a node: before any round
            self.close()
            raise UserError(f"a Ray worker could not start: {failures[0]}")
        logger.info("Ray backend: %d workers (%s inner backend) on %s", len(self.workers), opts.inner, self.address)

    # -- the backend interface ------------------------------------------------------------------
    def shared_parameters(self) -> Params:
        return self.local.shared_parameters()

    def export_client_state(self) -> tuple[dict[int, Params], dict[int, dict[str, Params]]]:
        return self.local.export_client_state()

    def import_client_state(self, kept: dict[int, Params], states: dict[int, dict[str, Params]]) -> None:
        self.local.import_client_state(kept, states)

    def _state_of(self, clients: list[int] | range) -> Any:
        """The kept tensors and plug-in states of `clients`, on the wire."""
        kept, states = self.local.export_client_state()
        return to_wire(({c: kept[c] for c in clients if c in kept}, {c: states[c] for c in clients if c in states}))

    def train_cohort(self, clients: list[int], round_num: int, global_params: Params,
                     extras: dict[str, Params] | None = None) -> Iterator[Upload]:
        """Each client's upload, in the order of `clients`, once every worker has finished its block."""
        sent = self.ray.put(to_wire((global_params, extras or {})))
        calls = [worker.train.remote(block, round_num, sent, self._state_of(block))
                 for worker, block in zip(self.workers, blocks(clients, len(self.workers))) if block]
        by_client: dict[int, Upload] = {}
        kept, states = self.local.export_client_state()
        for packed, state in self._wait(calls):
            new_kept, new_states = from_wire(state)
            kept.update(new_kept)
            states.update(new_states)
            by_client.update((u.client, u) for u in unpack_uploads(packed))
        device = self.local.device  # the driver's: its aggregation runs there; the wire carries CPU arrays
        for client in clients:
            u = by_client[client]
            yield u if device.type == "cpu" else Upload(u.client, to_device(u.params, device), u.metrics,
                                                        to_device(u.extras, device))

    def evaluate(self, global_params: Params, split: str) -> list[dict[str, Any]]:
        """Every client on `split`, in client order; worker w evaluates the w-th block of clients."""
        sent = self.ray.put(to_wire(global_params))
        calls = [worker.evaluate.remote(block, sent, split, self._state_of(block))
                 for worker, block in zip(self.workers, blocks(range(self.num_clients), len(self.workers)))
                 if len(block)]
        return [result for part in self._wait(calls) for result in part]

    def close(self) -> None:
        """Stop the workers, and the local Ray this backend started (a lost cluster: as far as it answers)."""
        for worker in self.workers:
            try:
                self.ray.kill(worker)
            except Exception:  # noqa: BLE001  (already gone with its node or its cluster)
                pass
        self.workers = []
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False

    # -- waiting, and the cluster's health ------------------------------------------------------
    def _wait(self, calls: list[Any]) -> list[Any]:
        """The calls' results; BackendLost when the cluster cannot finish them, a worker's own error as it is."""
        ray = self.ray
        pending, short_since = list(calls), None
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            if not pending:
                break
            shortage = self._shortage()
            if shortage is None:
                short_since = None
            elif short_since is None:
                short_since = time.monotonic()
            elif time.monotonic() - short_since > self.cfg.ray.lost_timeout:
                raise BackendLost(f"the Ray cluster at {self.address} is gone: {shortage}, for "
                                  f"{self.cfg.ray.lost_timeout:g} s")
        try:
            return ray.get(calls)
        except ray.exceptions.RayTaskError as error:  # the worker's own exception: a UserError stays one line
            cause = error.cause if isinstance(error.cause, BaseException) else error
            if isinstance(cause, UserError):
                raise cause from None
            raise
        except ray.exceptions.RayError as error:
            raise BackendLost(f"the Ray cluster at {self.address} is gone: {_first_line(error)}") from None

    def _shortage(self) -> str | None:
        """What the cluster's alive nodes lack to host every worker, or None when they can."""
        try:
            nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        except Exception as error:  # noqa: BLE001  (any failure to reach the head means the same)
            return f"its head does not answer ({type(error).__name__})"
        opts, count = self.cfg.ray, len(self.workers)
        for resource, each in (("CPU", opts.cpus_per_worker), ("GPU", opts.gpus_per_worker)):
            have = sum(n.get("Resources", {}).get(resource, 0.0) for n in nodes)
            if each and have < each * count:
                return (f"its {len(nodes)} alive node(s) have {have:g} {resource}s, the {count} workers need "
                        f"{each * count:g}")
        return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
