"""SCAFFOLD written outside fedplug, as part 2 of docs/writing-an-algorithm.md builds it step by step.

The algorithm: Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning", ICML 2020, Algorithm 1 with option II for the clients' control
variates. The server keeps a control variate c, each client i its own c_i, all zero at the start.

    down (with the model x):  c
    client, every step:       y <- y - lr * (g(y) + c - c_i)
    client, at the end:       c_i+ = c_i - c + (x - y) / (K * lr)      (option II; K: steps taken)
    up (with y):              delta c_i = c_i+ - c_i                    (summed by the server)
    server:                   c <- c + (1/N) * sum of the delta c_i     (N: every client)

Unlike FedProx (part 1), nothing here is a hook: SCAFFOLD changes the gradient, not the loss, and
it needs tensors to travel besides the model. So it uses only the contract's pure points, which
every backend (sequential, vectorized, distributed) runs as they are.

    fedplug --cfg configs/fedavg_lr_on_synthetic.yaml plugins examples/my_scaffold.py my_scaffold.use True

gives exactly what the built-in `scaffold.use True` gives, standalone and under `fedplug launch`
(tests/test_tutorial.py). To stay bit for bit equal, every formula below does its float
operations in the built-in's order: (a + b) + c and a + (b + c) can differ in the last bit.
"""
from __future__ import annotations

from typing import Any

import torch

from fedplug.algorithms.registry import register_algorithm
from fedplug.config import Key, Section, register_section
from fedplug.core.messages import Messages, RoundFacts, UpSpec, like
from fedplug.core.params import Params
from fedplug.core.plugin import LocalView, Plugin

# The config section: SCAFFOLD has no hyper-parameter of its own (it uses the client lr), so `use` is all.
register_section("my_scaffold", Section("SCAFFOLD (option II), written outside fedplug", {
    "use": Key(False, "switch my_scaffold on"),
}))


# Step 1: what travels besides the model. Declared from the layout of the shared parameters, so the
# same declaration serves every model; on the wire each tensor is named `my_scaffold/<parameter>`.
def control_messages(shared: Params) -> Messages:
    specs = like(shared)  # one control variate per shared parameter: same shape, same dtype
    # down: c, with the global model. up: delta c_i; the server needs their sum over the round's clients.
    return Messages(down=specs, up={name: UpSpec(spec, "sum") for name, spec in specs.items()})


# Step 2: the server's update of c, from the round's summed delta c_i and N = every client of the
# federation (not only those sampled: the clients that were not sampled keep their c_i, and c stays
# the mean of all the c_i). Written as a division by N, as the built-in writes it.
def moved_control(c: Params, summed_deltas: Params, num_clients: int) -> Params:
    return {n: c[n] + summed_deltas[n] / num_clients for n in c}


# Step 3: the gradient point. A correction of the gradient, not a term of the loss: applied after
# backward, before clipping and the optimizer's step. Elementwise code that broadcasts: under the
# vectorized backend `grads` and `c_i` carry a leading client axis and `c` does not.
def corrected_gradients(grads: Params, c: Params, c_i: Params) -> Params:
    return {n: g + (c[n] - c_i[n]) for n, g in grads.items()}


# Step 4: option II, after the local update: the new c_i from how far the client moved in K steps.
# Multiplying by 1 / (K * lr), not dividing by K * lr: the two can differ in the last bit.
def option_two(c_i: Params, c: Params, x: Params, y: Params, steps: int, lr: float) -> tuple[Params, Params]:
    """(c_i+, delta c_i) for a client that went from x (received) to y (uploaded) in `steps` steps."""
    scale = 1.0 / (steps * lr)
    new = {n: c_i[n] - c[n] + (x[n] - y[n]) * scale for n in c_i}
    return new, {n: new[n] - c_i[n] for n in c_i}


# Step 5: the plug-in, assembled from the steps above and registered under its section's name.
@register_algorithm
class MyScaffold(Plugin):
    name = "my_scaffold"
    # No `method`: it names the algorithm for `federate.method`, and "SCAFFOLD" is the built-in's.
    # Only pure points below, so the vectorized backend runs cohorts with it (a plug-in without hooks
    # would anyway; saying so is the honest declaration).
    vectorizes = True

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        # The server's c. Filled at the first broadcast, when the parameters' shapes are known, and
        # afterwards only updated in place: `server_state()` hands out this very dict, which the
        # checkpoint saves and a resumed run refills.
        self.c: Params = {}

    # -- what travels ------------------------------------------------------------------------------
    def messages(self, shared: Params) -> Messages:
        # A description only: fedplug also calls it with a placeholder layout (`fedplug plan`) and in
        # every client process, so it must not create state.
        return control_messages(shared)

    # -- server --------------------------------------------------------------------------------------
    def broadcast(self, facts: RoundFacts) -> Params:
        if not self.c:  # round 1 (of a fresh run): c = 0, shaped like the shared parameters
            self.c.update({n: torch.zeros_like(t) for n, t in facts.previous_global.items()})
        return dict(self.c)  # a copy of the dict: `receive` rebinds its entries, the clients keep theirs

    def receive(self, facts: RoundFacts) -> None:
        # facts.extras(name): this plug-in's `up` tensors reduced over the clients received ("sum").
        self.c.update(moved_control(self.c, facts.extras(self.name), facts.num_clients))

    def server_state(self) -> dict[str, Any]:
        return {"c": self.c}  # checkpointed as server/my_scaffold/c/<parameter>

    def describe_server(self) -> list[str]:
        # A line of `fedplug plan`'s server section; its first word places it in the pipeline.
        return [f"{'receive':<19}c <- c + (1/N) * sum of delta c_i (option II control variates)"]

    # -- client --------------------------------------------------------------------------------------
    def init_client_state(self, received: Params) -> dict[str, torch.Tensor]:
        return {n: torch.zeros_like(t) for n, t in received.items()}  # c_i = 0 at a client's first visit

    def transform_gradients(self, grads: Params, view: LocalView) -> Params:
        # view.extras: the c this client received; view.state: its c_i (read only here)
        return corrected_gradients(grads, view.extras, view.state)

    def client_upload(self, view: LocalView) -> Params:
        # view.received: x; view.params: y; view.metrics["train_steps"]: K, the steps this client took
        new, delta = option_two(view.state, view.extras, view.received, view.params,
                                view.metrics["train_steps"], view.lr)
        view.state.update(new)  # the client keeps c_i+ for its next visit (in place: the runner's dict)
        return delta
