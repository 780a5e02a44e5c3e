"""The compiled CPU decoding step's matrix products on oneDNN, each weight packed once per decoding run.

A decoding step multiplies one row per sample by every weight matrix of the prior. At those shapes (64 rows
at batch 64) MKL's sgemm behind `addmm` ran at 90-115 GFLOP/s on a 2-core Xeon, and oneDNN with the weight
reordered into its blocked layout at 155-188 (`benchmarks/sampling_speed.py --matmuls`). Inductor packs
weights itself only when it freezes them into constants (stale once the prior trains on), and in float32 it
then packs for MKL, which gained nothing here. So the compiled CPU step gets a graph pass that sends each
matrix product whose right operand is a graph input (a parameter, as stored or transposed) through
`vqgen::onednn_linear`. Inside `packing_scope()` its kernel packs a weight on first use and reuses the pack
for the rest of the run; the packs are dropped when the scope closes, so a prior that trains between runs is
never multiplied by an old copy of itself. Outside a scope it calls oneDNN on the weight as stored.

The products are the same sums as `addmm`'s, in oneDNN's order: results agree to float32 rounding (~1e-6).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

aten = torch.ops.aten

# (data_ptr, version, stored_in_out, rows) -> packed weight, for the decoding run in progress (None: no run)
_PACKS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("vqgen_onednn_packs", default=None)

_LIBRARY = torch.library.Library("vqgen", "DEF")
_LIBRARY.define("onednn_linear(Tensor x, Tensor weight, Tensor? bias, bool stored_in_out) -> Tensor")


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stored_in_out: bool) -> torch.Tensor:
    """`m k` rows times a weight stored `n k` (nn.Linear) or `k n` (GPT-2's Conv1D, `stored_in_out`), plus `n`
    bias -> `m n`."""
    oriented = weight.t() if stored_in_out else weight  # n k: oneDNN's orientation
    packs = _PACKS.get()
    if packs is not None:
        # the version counter moves with every in-place write, so a weight changed mid-run gets a new pack
        key = (weight.data_ptr(), weight._version, stored_in_out, x.shape[0])
        if key not in packs:
            packs[key] = torch.ops.mkldnn._reorder_linear_weight(oriented.contiguous(), x.shape[0])
        oriented = packs[key]
    return torch.ops.mkldnn._linear_pointwise(x, oriented, bias, "none", [], "")


_LIBRARY.impl("onednn_linear", onednn_linear, "CPU")


@torch.library.register_fake("vqgen::onednn_linear", lib=_LIBRARY)
def _onednn_linear_shape(x, weight, bias, stored_in_out):
    return x.new_empty(x.shape[0], weight.shape[1] if stored_in_out else weight.shape[0])


def available() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


@contextlib.contextmanager
def packing_scope() -> Iterator[None]:
    """Weights packed inside this scope are reused until it closes, then dropped."""
    token = _PACKS.set({})
    try:
        yield
    finally:
        _PACKS.reset(token)


def parameter_inputs(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """The graph's inputs that are parameters (AOTAutograd's static inputs: the same tensors at every call). Other
    inputs are new tensors at every step, which would be packed afresh each time. Empty where the compiler does not
    say, and then nothing is routed."""
    context = torch._guards.TracingContext.try_get()
    static = getattr(getattr(context, "fw_metadata", None), "static_input_indices", None) or ()
    inputs = [node for node in graph.nodes if node.op == "placeholder"]
    return {inputs[i] for i in static if i < len(inputs)}


class OneDNNMatmuls(CustomGraphPass):
    """Inductor post-grad pass: `addmm(bias, x, w)` and `mm(x, w)` in float32, with `w` a 2-D parameter or its
    transpose, become `vqgen::onednn_linear`. Everything else is left to inductor."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        parameters = parameter_inputs(graph)
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target not in (aten.addmm.default, aten.mm.default):
                continue
            if node.target is aten.addmm.default:
                if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("beta", 1) != 1:
                    continue
                bias, x, right = node.args
                if bias.meta["val"].dim() != 1:
                    continue
            else:
                bias, (x, right) = None, node.args
            if right.op == "call_function" and right.target is aten.permute.default and list(right.args[1]) == [1, 0]:
                weight, stored_in_out = right.args[0], False  # x @ w.t(): nn.Linear's `n k` weight
            else:
                weight, stored_in_out = right, True  # x @ w: a `k n` weight (Conv1D)
            value = weight.meta.get("val")
            if (weight not in parameters or value is None or value.dim() != 2 or value.dtype != torch.float32
                    or x.meta["val"].dtype != torch.float32 or value.device.type != "cpu"):
                continue
            with graph.inserting_before(node):
                routed = graph.call_function(torch.ops.vqgen.onednn_linear.default, (x, weight, bias, stored_in_out))
            routed.meta.update(node.meta)
            node.replace_all_uses_with(routed)
            graph.erase_node(node)

    def uuid(self) -> bytes:
        return get_hash_for_files((__file__,))
