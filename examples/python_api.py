"""fedplug from Python (docs/python-api.md): a packaged config by name, overrides as a dict, a
plug-in class of your own passed in, the results as an object, a mistake as an exception.

    python examples/python_api.py      # a few seconds; run folders go to exp/ under the current folder

tests/test_python_api.py runs it.
"""
from __future__ import annotations

import fedplug
from fedplug.config import Key, Section, register_section
from fedplug.core.plugin import Plugin
from fedplug.errors import UserError

# The reference config with a short protocol: 12 clients, 4 rounds, an evaluation every 2.
QUICK = {
    "data.synthetic.num_clients": 12,
    "data.synthetic.val_size": 200,
    "data.synthetic.test_size": 200,
    "federate.total_round_num": 4,
    "federate.sample_client_rate": 0.5,
    "train.local_update_steps": 5,
    "dataloader.batch_size": 16,
    "eval.freq": 2,
    "early_stop.patience": 0,
    "threads": 1,
}

# A plug-in of your own: a server learning rate. The new global model goes `lr` of the way from the
# old one to the round's average (lr 1: FedAvg). Its config section first, then the class.
register_section("server_lr", Section("server learning rate", {
    "use": Key(False, "switch server_lr on"),
    "lr": Key(1.0, "fraction of the step from the global model to the round's average",
              check=lambda v: v > 0, check_msg="> 0"),
}))


class ServerLR(Plugin):
    name = "server_lr"

    def transform_aggregate(self, old, aggregate, facts):
        lr = self.section.lr
        return {n: old[n] + lr * (aggregate[n] - old[n]) for n in aggregate}

    def describe_server(self) -> list[str]:
        return [f"{'transform':<19}global <- global + {self.section.lr} * (aggregate - global)"]


def main() -> None:
    plain = fedplug.run("fedavg_lr_on_synthetic", QUICK)
    print(f"FedAvg:             test acc {plain.test_acc:.4f} at round {plain.best_round} of {plain.rounds_run}")

    # `plugins=[ServerLR]` registers the class and switches it on (server_lr.use: True).
    damped = fedplug.run("fedavg_lr_on_synthetic", {**QUICK, "server_lr.lr": 0.5}, plugins=[ServerLR])
    print(f"FedAvg + server_lr: test acc {damped.test_acc:.4f} at round {damped.best_round}; {damped.run_dir}")
    for record in damped.metrics:  # metrics.jsonl, one dict per evaluation
        print(f"  round {record['round']}: val loss {record['val_loss']:.4f}, test acc {record['test_acc']:.4f}")

    try:
        fedplug.run("fedavg_lr_on_synthetic", {**QUICK, "train.optimizer.lr": -1.0})
    except UserError as err:  # a ConfigError here: the same sentence the command line prints
        print(f"refused: {err}")


if __name__ == "__main__":
    main()
