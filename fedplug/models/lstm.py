"""CharLSTM: next-character prediction model of the Shakespeare column.

Embedding(80, 8) -> 2-layer LSTM (hidden 256, batch_first) -> Linear(256, 80) on the output of the
last time step. Input: (batch, seq_len) int64 character indices (seq_len 80 in the benchmark);
output: (batch, vocab_size) logits for the next character. Exactly 819,920 parameters with the defaults.
The LSTM is a StackedLSTM (models/vmap_lstm.py): nn.LSTM's parameters and numbers, and batchable by
torch.func.vmap, so the vectorized backend trains cohorts of it.
"""
from __future__ import annotations

import torch
from torch import nn

from fedplug.models.vmap_lstm import StackedLSTM


class CharLSTM(nn.Module):
    def __init__(self, vocab_size: int = 80, embed_dim: int = 8, hidden: int = 256, num_layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = StackedLSTM(embed_dim, hidden, num_layers=num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x.long()))  # (batch, seq_len, hidden)
        return self.fc(out[:, -1, :])  # predict from the last time step only
