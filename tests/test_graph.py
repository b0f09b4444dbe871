"""graph_multi_domain_mol and the GIN on small TU-format folders generated here (the real ones cannot be
downloaded): the reader against torch_geometric's TUDataset, shapes and splits, batches against PyG's
collation, FedBN keeping BatchNorm local, refusals and clear errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric")

from torch_geometric.data import Batch, Data  # noqa: E402
from torch_geometric.datasets import TUDataset  # noqa: E402

from fedplug.backends import build_backend  # noqa: E402
from fedplug.backends.sequential import SequentialBackend  # noqa: E402
from fedplug.config import load_config  # noqa: E402
from fedplug.data import build_data  # noqa: E402
from fedplug.data.graph_rows import GraphBatch  # noqa: E402
from fedplug.data.tu_graphs import find_folder, read_tu  # noqa: E402
from fedplug.errors import ConfigError, DataError  # noqa: E402
from fedplug.models import build_model, check_fits  # noqa: E402
from fedplug.run import checkpoint  # noqa: E402
from fedplug.run.plan import build_plan  # noqa: E402
from fedplug.run.simulation import run  # noqa: E402

# name: (graphs, atom types, graph label values); the labels as the real files spell them (MUTAG: -1/1)
SETS = {"MUTAG": (12, 3, (-1, 1)), "BZR": (10, 5, (0, 1)), "PTC_MR": (11, 4, (0, 1))}
CONFIG = "configs/fedbn_gin_on_multi_domain_mol.yaml"


def write_dataset(folder: Path, name: str, num_graphs: int, atom_types: int, label_values: tuple[int, ...],
                  seed: int = 0) -> None:
    """A TU-format data set: NAME_A (both directions of each bond), _graph_indicator, _graph_labels,
    _node_labels, 1-based ids as in the real files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    edges, indicator, node_labels, first = [], [], [], 1
    for g in range(num_graphs):
        n = int(rng.integers(2, 7))
        for i in range(1, n):  # a random tree plus one extra bond: connected, varied
            j = int(rng.integers(0, i))
            edges += [(first + i, first + j), (first + j, first + i)]
        if n > 2:
            edges += [(first, first + n - 1), (first + n - 1, first)]
        indicator += [g + 1] * n
        node_labels += rng.integers(0, atom_types, n).tolist()
        first += n
    node_labels[:atom_types] = range(atom_types)  # every atom type occurs: the one-hot width is atom_types
    labels = [label_values[g % len(label_values)] for g in range(num_graphs)]
    (folder / f"{name}_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges))
    (folder / f"{name}_graph_indicator.txt").write_text("".join(f"{g}\n" for g in indicator))
    (folder / f"{name}_graph_labels.txt").write_text("".join(f"{y}\n" for y in labels))
    (folder / f"{name}_node_labels.txt").write_text("".join(f"{t}\n" for t in node_labels))


@pytest.fixture
def graph_root(tmp_path: Path) -> Path:
    root = tmp_path / "graphs"
    for k, (name, spec) in enumerate(SETS.items()):
        write_dataset(root / name / "raw", name, *spec, seed=k)  # where TUDataset keeps a data set
    return root


@pytest.fixture
def graph_cfg(tmp_path: Path, graph_root: Path):
    def make(**overrides):
        return load_config(CONFIG, {"data.root": str(graph_root), "data.graph.datasets": list(SETS),
                                    "outdir": str(tmp_path / "runs"), "federate.total_round_num": 2,
                                    "train.local_update_steps": 3, "dataloader.batch_size": 4, "model.hidden": 8,
                                    "eval.freq": 1, "checkpoint.every": 0, "device": "cpu", "threads": 1,
                                    **{k.replace("__", "."): v for k, v in overrides.items()}})
    return make


def test_the_reader_gives_what_torch_geometric_tudataset_gives(graph_root: Path) -> None:
    graphs, y, width = read_tu(graph_root / "MUTAG" / "raw", "MUTAG")
    reference = TUDataset(str(graph_root), "MUTAG")
    assert len(graphs) == len(reference) == 12 and width == reference.num_node_features == 3
    for (x, edge_index), want in zip(graphs, reference):
        assert torch.equal(x, want.x) and torch.equal(edge_index, want.edge_index)
    assert torch.equal(y, reference.y) and set(y.tolist()) == {0, 1}  # -1/1 become classes 0/1


def test_one_client_per_data_set_split_at_random_and_padded(graph_cfg) -> None:
    data = build_data(graph_cfg())
    assert data.num_clients == 3 and data.num_classes == 2 and data.input_shape == (5,)  # BZR's 5 atom types
    for c, (name, (n, atoms, _)) in enumerate(SETS.items()):
        sizes = [data.splits[s].sizes()[c] for s in ("train", "val", "test")]
        assert sizes == [int(0.8 * n), int(0.1 * n), n - int(0.8 * n) - int(0.1 * n)]
        nodes = torch.cat([data.splits[s].client(c)[0][:].x for s in ("train", "val", "test")])
        assert nodes[:, atoms:].abs().sum() == 0 and (nodes[:, :atoms].sum(1) == 1).all()  # one-hot, zero padding
        graphs, _, _ = read_tu(Path(graph_cfg().data.root) / name / "raw", name)
        assert nodes.shape[0] == sum(x.shape[0] for x, _ in graphs)  # every graph once, none lost
    first_two = build_data(graph_cfg(federate__client_num=2)).splits["train"]
    assert first_two.sizes() == data.splits["train"].sizes()[:2]
    assert torch.equal(first_two.x[:].x, torch.cat([data.splits["train"].client(c)[0][:].x for c in range(2)]))
    again, reseeded = build_data(graph_cfg()), build_data(graph_cfg(data__graph__seed=7))
    assert torch.equal(again.splits["train"].y, data.splits["train"].y)
    assert not torch.equal(reseeded.splits["train"].x.x, data.splits["train"].x.x)  # another split


def test_a_gathered_batch_equals_torch_geometric_collation(graph_cfg) -> None:
    split = build_data(graph_cfg()).splits["train"]
    x, _ = split.client(1)  # a client's share: a lazy sub-range
    index = torch.tensor([4, 0, 6, 2])
    got = x[index]
    want = Batch.from_data_list([Data(x=x[int(i)].x, edge_index=x[int(i)].edge_index) for i in index])
    assert got.num_graphs == want.num_graphs == 4
    for field in ("x", "edge_index", "batch", "ptr"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert torch.equal(x[1:3].x, torch.cat([x[1].x, x[2].x]))  # a slice (evaluation) is the same gather


def test_fedbn_keeps_batchnorm_encoder_and_classifier_local_on_graphs(graph_cfg) -> None:
    cfg = graph_cfg()
    data, plan = build_data(cfg), build_plan(cfg)
    backend = SequentialBackend(cfg, build_model(cfg, data.input_shape, plan), plan, data)
    start = {k: v.clone() for k, v in backend.shared_parameters().items()}
    assert any(".nn.lin1." in n for n in start) and "linear.0.weight" in start
    assert not any(p in n for n in start for p in ("norm", "encoder", "clf"))
    assert "convs.0.nn.norm.running_mean" in backend.kept_names and "convs.1.nn.norm.weight" in backend.kept_names
    backend.train_client(0, 1, start)
    norm_0 = backend.model.convs[0].nn.norm.weight.detach().clone()
    backend.train_client(2, 1, start)
    backend.download(0, start)  # client 0 gets its own BatchNorm back, not client 2's
    assert torch.equal(backend.model.convs[0].nn.norm.weight, norm_0)
    assert not torch.equal(norm_0, backend._initial_kept["convs.0.nn.norm.weight"])


def test_a_run_trains_and_repeats_bit_for_bit(graph_cfg) -> None:
    first, second = run(graph_cfg()), run(graph_cfg())
    assert first["rounds_run"] == 2 and 0 <= first["test_acc"] <= 1
    assert first["test_acc"] == second["test_acc"] and first["val_loss"] == second["val_loss"]


def test_resume_brings_back_each_clients_own_batchnorm(graph_cfg, rewind) -> None:
    """FedBN's local layers are the checkpoint's per-client "kept" tensors (no model on the LR federation has
    any): resumed after round 2 of 4, the run ends as the uninterrupted one; with every client handed the
    initial BatchNorm instead, it would not."""
    cfg = graph_cfg(federate__total_round_num=4, checkpoint__every=2)
    whole = run(cfg)
    run_dir = Path(whole["run_dir"])
    kept = checkpoint.unflatten(checkpoint.load(run_dir / checkpoint.CHECKPOINT_FILE)[0], "clients/")
    assert {"kept"} <= set(kept["0"]) and "convs.0.nn.norm.weight" in kept["0"]["kept"]
    rewind(run_dir, 2)
    assert run(cfg, run_dir, resume=True) == whole


def test_missing_and_malformed_files_name_the_file(graph_cfg, graph_root: Path) -> None:
    with pytest.raises(DataError, match=r"NCI1/raw/NCI1_A.txt: no such file"):
        build_data(graph_cfg(data__graph__datasets=["MUTAG", "NCI1"]))
    labels = graph_root / "BZR" / "raw" / "BZR_node_labels.txt"
    labels.write_text(labels.read_text().replace("\n", "\nC\n", 1))
    with pytest.raises(DataError, match=r"BZR_node_labels.txt: malformed"):
        build_data(graph_cfg())
    labels.write_text("0\n1\n")
    with pytest.raises(DataError, match=r"BZR_node_labels.txt: 2 lines, but .*BZR_graph_indicator.txt has"):
        build_data(graph_cfg())
    (graph_root / "BZR" / "raw" / "BZR_graph_labels.txt").unlink()
    with pytest.raises(DataError, match=r"BZR_graph_labels.txt: no such file"):
        build_data(graph_cfg())


def test_the_cli_says_one_line_naming_the_missing_file(graph_cfg, capsys) -> None:
    from conftest import cli_call

    cfg = graph_cfg()
    code, _, err = cli_call(capsys, "--cfg", CONFIG, "data.root", cfg.data.root + "/nowhere", "outdir", cfg.outdir)
    assert code == 2 and err.count("\n") == 1 and err.startswith("fedplug: error: ") and "MUTAG_A.txt" in err


def test_wrong_model_and_vectorized_backend_are_refused(graph_cfg) -> None:
    data = build_data(graph_cfg())
    with pytest.raises(ConfigError, match="model.type lr cannot read the graph_multi_domain_mol data .graphs.; use "
                                          "model.type gin"):
        check_fits(graph_cfg(model__type="lr"), data)
    for overrides, key in (({"federate.backend": "vectorized"}, "federate.backend"),
                           ({"federate.backend": "ray", "ray.inner": "vectorized"}, "ray.inner")):
        cfg = graph_cfg(**{k.replace(".", "__"): v for k, v in overrides.items()})
        plan = build_plan(cfg)
        with pytest.raises(ConfigError, match=f"{key} vectorized cannot stack .*; use {key} sequential"):
            build_backend(cfg, build_model(cfg, data.input_shape, plan), plan, data)  # refused before Ray starts


def test_the_base_install_never_imports_torch_geometric() -> None:
    code = ("import sys, fedplug.cli, fedplug.data, fedplug.models, fedplug.backends, fedplug.run.simulation; "
            "assert 'torch_geometric' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_zero_padding_changes_nothing_for_a_per_client_encoder(graph_cfg) -> None:
    """MUTAG's 3 atom types padded to 5: the GIN computes what one sized for 3 computes."""
    cfg = graph_cfg()
    data = build_data(cfg)
    padded = build_model(cfg, data.input_shape, build_plan(cfg)).eval()
    sized = build_model(cfg, (3,), build_plan(cfg)).eval()
    sized.load_state_dict({k: v[:, :3] if k == "encoder.weight" else v for k, v in padded.state_dict().items()})
    batch = data.splits["train"].client(0)[0][:]
    narrow = GraphBatch(batch.x[:, :3], batch.edge_index, batch.batch, batch.ptr, batch.num_graphs)
    torch.testing.assert_close(padded(batch), sized(narrow), rtol=1e-6, atol=1e-6)


def test_the_zip_layout_is_read_too(tmp_path: Path) -> None:
    write_dataset(tmp_path / "COX2", "COX2", 6, 2, (0, 1))  # data.root/NAME/NAME_A.txt, as TU's zip unpacks
    assert find_folder(tmp_path, "COX2") == tmp_path / "COX2"
