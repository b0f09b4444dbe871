"""FedAvg on Synthetic as a plain PyTorch script: the arithmetic floor fedplug is measured against.

It does exactly the arithmetic of `fedplug --cfg configs/fedavg_lr_on_synthetic.yaml` (same data,
same seeds, same batches, same evaluation) with no framework: one loop over rounds, one over
clients, one over batches. `tests/test_plain_equivalence.py` checks that both give the same
numbers, so the speed ratio compares like with like.

    python benchmarks/plain_fedavg_synthetic.py            # the reference protocol
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch
from torch import nn

from fedplug.data.synthetic import SyntheticParams, generate_synthetic


def seed_for(root: int, *path: int) -> int:
    return int(np.random.SeedSequence([root, *path]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def run_plain(num_clients: int = 300, val_size: int = 5000, test_size: int = 5000, rounds: int = 200,
              per_round: int = 60, steps: int = 10, batch_size: int = 64, lr: float = 0.1, eval_freq: int = 10,
              eval_batch: int = 5000, patience: int = 5, seed: int = 0, data_seed: int = 12345) -> dict:
    arrays = generate_synthetic(SyntheticParams(num_clients=num_clients, val_size=val_size, test_size=test_size,
                                                seed=data_seed))
    data = {s: (torch.from_numpy(a.x), torch.from_numpy(a.y), a.offsets.tolist()) for s, a in arrays.items()}

    def client(split: str, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, off = data[split]
        return x[off[c]:off[c + 1]], y[off[c]:off[c + 1]]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, 0))
        model = nn.Linear(arrays["train"].x.shape[1], 2)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)  # plain SGD keeps no state between clients
    global_params = [p.detach().clone() for p in model.parameters()]
    best_loss, best_round, best_test_acc, bad, last_round = math.inf, None, None, 0, 0

    for r in range(1, rounds + 1):
        sampled = sorted(torch.randperm(num_clients, generator=torch.Generator().manual_seed(seed_for(seed, 1, r)))
                         [:per_round].tolist())
        sums, total = [torch.zeros_like(p) for p in global_params], 0.0
        for c in sampled:
            with torch.no_grad():
                for p, g in zip(model.parameters(), global_params):
                    p.copy_(g)
            x, y = client("train", c)
            gen = torch.Generator().manual_seed(seed_for(seed, 2, r, c))
            n_done, done, n = 0, 0, x.shape[0]
            while done < steps:  # cycle over reshuffled epochs until `steps` batches are taken
                order = torch.randperm(n, generator=gen)
                for start in range(0, n, batch_size):
                    idx = order[start:start + batch_size]
                    loss = loss_fn(model(x[idx]), y[idx])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    n_done += idx.shape[0]
                    done += 1
                    if done == steps:
                        break
            for s, p in zip(sums, model.parameters()):
                s.add_(p.detach(), alpha=n_done)
            total += n_done
        global_params = [s / total for s in sums]
        last_round = r
        if r % eval_freq and r != rounds:
            continue
        with torch.no_grad():
            for p, g in zip(model.parameters(), global_params):
                p.copy_(g)
            pooled = {}
            for split in ("val", "test"):
                loss_sum, correct, count = 0.0, 0, 0
                for c in range(num_clients):
                    x, y = client(split, c)
                    for start in range(0, x.shape[0], eval_batch):
                        logits = model(x[start:start + eval_batch])
                        yb = y[start:start + eval_batch]
                        loss_sum += loss_fn(logits, yb).item() * yb.shape[0]
                        correct += int((logits.argmax(dim=1) == yb).sum())
                        count += yb.shape[0]
                pooled[split] = (loss_sum / count, correct / count)
        val_loss = pooled["val"][0]
        bad = 0 if val_loss < best_loss else bad + 1
        if val_loss < best_loss:
            best_loss, best_round, best_test_acc = val_loss, r, pooled["test"][1]
        if patience and bad >= patience:
            break
    return {"best_round": best_round, "test_acc": best_test_acc, "val_loss": best_loss, "rounds_run": last_round}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-clients", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--per-round", type=int, default=60)
    args = parser.parse_args()
    print(json.dumps(run_plain(num_clients=args.num_clients, rounds=args.rounds, per_round=args.per_round)))
