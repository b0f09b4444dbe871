"""StackedLSTM: nn.LSTM's parameters and numbers, with a forward that torch.func.vmap can batch.

The LSTM (Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 9(8), 1997; with
the forget gate of Gers, Schmidhuber & Cummins, 2000) as PyTorch defines it, gates in the order
i, f, g, o:

    i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

The module holds exactly nn.LSTM's parameters (`weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`,
`bias_hh_l{k}`, same shapes, same registration order, same uniform(-1/sqrt(hidden), 1/sqrt(hidden))
initialisation), so a seed gives the same initial weights and checkpoints load either way.

Two forwards. Outside vmap: PyTorch's fused kernel (`torch.lstm`, the call nn.LSTM makes) with the
module's own parameters, so the sequential backend's numbers and speed are nn.LSTM's bit for bit.
Under vmap (PyTorch has no batching rule for `aten::lstm`): the equations above in tensor ops, the
input projection of all time steps in one matmul per layer and a loop over time for the recurrence;
equal to the fused kernel within float rounding (tests/test_vmap_lstm.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch._C import _functorch

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, batch, hidden)


def under_vmap() -> bool:
    """Whether a torch.func.vmap level is active (at any depth, e.g. vmap over grad).

    Checked on functorch's transform stack rather than on the input: under vmap(grad(...)) the
    tensors seen here are grad wrappers around batched ones, and `is_batchedtensor` would miss them."""
    stack = _functorch.get_interpreter_stack()
    return bool(stack) and any(level.key() == _functorch.TransformType.Vmap for level in stack)


class StackedLSTM(nn.Module):
    """A unidirectional multi-layer LSTM with biases and no dropout: nn.LSTM's subset CharLSTM uses."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers, self.batch_first = (
            input_size, hidden_size, num_layers, batch_first)
        for k in range(num_layers):
            width = input_size if k == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(4 * hidden_size, width)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(4 * hidden_size, hidden_size)))
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(4 * hidden_size)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(4 * hidden_size)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTM's: every parameter uniform(-1/sqrt(hidden), 1/sqrt(hidden)), in registration order."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def layer(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W_ih, W_hh, b_ih, b_hh) of layer k, read at call time (functional_call swaps them)."""
        return (getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}"), getattr(self, f"bias_ih_l{k}"),
                getattr(self, f"bias_hh_l{k}"))

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x: (batch, seq, input) if batch_first else (seq, batch, input). Returns nn.LSTM's
        (output of the last layer at every step, (h_n, c_n)), zeros as the default initial state."""
        if x.dim() != 3:
            raise ValueError(f"StackedLSTM: expected a 3-D input (batched sequences), got {x.dim()}-D")
        batch = x.size(0) if self.batch_first else x.size(1)
        if state is None:
            zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
            state = (zeros, zeros)
        if not under_vmap():
            weights = [w for k in range(self.num_layers) for w in self.layer(k)]
            out, h_n, c_n = torch.lstm(x, state, weights, True, self.num_layers, 0.0, self.training, False,
                                       self.batch_first)
            return out, (h_n, c_n)
        return self._tensor_ops(x.transpose(0, 1) if self.batch_first else x, state)

    def _tensor_ops(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The cell equations on time-major (seq, batch, input), one layer after another."""
        h_n, c_n = [], []
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer(k)
            # Every step's input projection in one matmul. unbind, not [t]: indexing a step would give
            # its backward a zero tensor of the whole sequence to fill, per step.
            gates_x = F.linear(x, w_ih, b_ih + b_hh).unbind(0)
            h, c = state[0][k], state[1][k]
            steps = []
            for gx in gates_x:
                i, f, g, o = (gx + F.linear(h, w_hh)).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                steps.append(h)
            x = torch.stack(steps)
            h_n.append(h)
            c_n.append(c)
        return x.transpose(0, 1) if self.batch_first else x, (torch.stack(h_n), torch.stack(c_n))
