"""The compiled CPU decoding step's matrix products on oneDNN, with packed weights.

A decoding step multiplies one row per sample by every weight matrix of the prior. At those shapes (64 rows
at batch 64) MKL's sgemm behind `addmm` ran at 88-115 GFLOP/s on a 2-core Xeon, and oneDNN with the weight
reordered into its blocked layout at 150-191 (`benchmarks/sampling_speed.py --matmuls`). Inductor packs
weights itself only when it freezes them into constants (stale once the prior trains on), and in float32 it
then packs for MKL, which gained nothing here. So the compiled CPU step gets a graph pass that sends each
matrix product whose right operand is a parameter (as stored or transposed) through `vqgen::onednn_linear`,
with the activation that follows it (GPT-2's tanh GELU, Llama's SiLU) computed by oneDNN on the product's output
while it is still in cache: 24 us against ~60 us for inductor's separate GELU kernel at 64 x 1024.

Packing a weight costs about what 25 steps gain from it (the MNIST prior: ~20 ms), so packs are kept between
runs, beside a copy of the weight they were made from. Inside a decoding run (`packing_scope()`) each pack is
checked against its weight once, exactly (`torch.equal`, which also sees writes through `.data` that leave the
version counter alone), and against the weight's storage and version counter at every use; a weight that
changed is packed afresh. So a prior that trains between runs is never multiplied by an old copy of itself.
The cost is memory: two extra copies of the weight matrices, freed with the prior. Outside a run the kernel
calls oneDNN on the weight as stored.

The products are the same sums as `addmm`'s, in oneDNN's order: results agree to float32 rounding (~1e-6), so
a sampled code can differ only where a draw falls within rounding of a cut-off or CDF boundary.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten

_LIBRARY = torch.library.Library("vqgen", "DEF")
_LIBRARY.define("onednn_linear(Tensor x, Tensor weight, Tensor? bias, bool stored_in_out, str activation='none', "
                "str algorithm='') -> Tensor")

# oneDNN's post-ops (name, algorithm) -> what they compute: the activations a graph's products are fused with
ACTIVATIONS = {
    ("gelu", "tanh"): lambda t: F.gelu(t, approximate="tanh"),  # GPT-2's "gelu_new" is this formula
    ("gelu", "none"): F.gelu,
    ("swish", ""): F.silu,
    ("relu", ""): F.relu,
}

try:
    _LINEAR = torch.ops.mkldnn._linear_pointwise.default
    _PACK = torch.ops.mkldnn._reorder_linear_weight.default
except (AttributeError, RuntimeError):  # a torch built without oneDNN: `available()` is False, nothing is routed
    _LINEAR = _PACK = None


@dataclass
class PackedWeight:
    """A parameter as it was last packed (a copy, and its storage and version), with its pack in oneDNN's blocked
    layout per orientation, made for the latest number of rows (a hint that picks the layout: a new batch size
    repacks rather than keeping a pack per size)."""

    source: torch.Tensor
    data_ptr: int
    version: int
    packs: dict[bool, tuple[int, torch.Tensor]]

    @classmethod
    def of(cls, weight: torch.Tensor) -> PackedWeight:
        return cls(weight.detach().clone(), weight.data_ptr(), weight._version, {})

    def matches(self, weight: torch.Tensor, checked: set[int]) -> bool:
        """Still the weight's values: same storage and version at every use, and equal values at a run's first."""
        if weight.data_ptr() != self.data_ptr or weight._version != self.version:
            return False
        if id(self) not in checked:
            if not torch.equal(self.source, weight):
                return False
            checked.add(id(self))
        return True

    def packed(self, stored_in_out: bool, rows: int) -> torch.Tensor:
        if self.packs.get(stored_in_out, (None,))[0] != rows:  # oneDNN's orientation is `n k`
            oriented = (self.source.t() if stored_in_out else self.source).contiguous()
            self.packs[stored_in_out] = (rows, _PACK(oriented, rows))
        return self.packs[stored_in_out][1]


# parameter -> PackedWeight; an entry dies with its parameter
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()
# the entries checked against their parameters in the decoding run in progress (None: no run)
_CHECKED: contextvars.ContextVar[set[int] | None] = contextvars.ContextVar("vqgen_onednn_checked", default=None)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stored_in_out: bool,
                  activation: str = "none", algorithm: str = "") -> torch.Tensor:
    """`m k` rows times a weight stored `n k` (nn.Linear) or `k n` (GPT-2's Conv1D, `stored_in_out`), plus `n`
    bias, through `activation` ("none" or a key of `ACTIVATIONS`) -> `m n`."""
    checked = _CHECKED.get()
    if checked is None or weight.is_inference():  # an inference tensor has no version counter to check a pack by
        return _LINEAR(x, weight.t() if stored_in_out else weight, bias, activation, [], algorithm)
    entry = _PACKED.get(weight)
    if entry is None or not entry.matches(weight, checked):
        entry = _PACKED[weight] = PackedWeight.of(weight)
        checked.add(id(entry))
    return _LINEAR(x, entry.packed(stored_in_out, x.shape[0]), bias, activation, [], algorithm)


_LIBRARY.impl("onednn_linear", onednn_linear, "CPU")


@torch.library.register_fake("vqgen::onednn_linear", lib=_LIBRARY)
def _onednn_linear_shape(x, weight, bias, stored_in_out, activation="none", algorithm=""):
    return x.new_empty(x.shape[0], weight.shape[1] if stored_in_out else weight.shape[0])


def available() -> bool:
    return _LINEAR is not None and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


@contextlib.contextmanager
def packing_scope(model: torch.nn.Module | None = None) -> Iterator[None]:
    """One decoding run: packs are used inside it, each checked against its weight on first use. The packs of
    `model`'s parameters that no longer match them (moved, converted, written) are dropped first."""
    if model is not None:
        for parameter in model.parameters():
            entry = _PACKED.get(parameter)
            if entry is not None and entry.data_ptr != parameter.data_ptr():  # `.to()` gives new storage
                del _PACKED[parameter]
    token = _CHECKED.set(set())
    try:
        yield
    finally:
        _CHECKED.reset(token)


def parameter_inputs(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """The graph's inputs that stay the same tensors, unchanged, from call to call: AOTAutograd's static inputs
    (parameters, buffers, tensors at a static address such as the cache's) that the graph does not write to.
    Other inputs are new tensors at every step, or changed by it, and would be packed afresh each time. Empty
    where the compiler does not say, and then nothing is routed."""
    metadata = getattr(torch._guards.TracingContext.try_get(), "fw_metadata", None)
    static = getattr(metadata, "static_input_indices", None) or ()
    info = getattr(metadata, "input_info", None) or ()
    inputs = [node for node in graph.nodes if node.op == "placeholder"]
    return {inputs[i] for i in static if i < len(inputs) and not (i < len(info) and info[i].mutates_data)}


def output_of(product: torch.fx.Node) -> torch.fx.Node:
    """The node that hands `product`'s result on: its one reshape (to the `b t n` of the model's code), or itself."""
    users = list(product.users)
    return users[0] if len(users) == 1 and users[0].target in (aten.reshape.default, aten.view.default) else product


def activation_after(product: torch.fx.Node) -> tuple[str, str, list[torch.fx.Node]] | None:
    """The pointwise nodes after `product` that compute one of `ACTIVATIONS` of it and nothing else -> (oneDNN's
    name for the activation, its algorithm, the nodes in graph order from `output_of(product)` to the one giving
    the activation); None if there are none.

    The nodes are recognised by what they compute, not by their ops: a formula like GPT-2's `gelu_new` reaches
    this pass as eight ops (mul, pow, add, tanh...) in the order its author wrote them. They are run on a probe of
    the product's shape, and the first node equal to an activation of the probe ends the chain, if the product
    and every node before it feed only the chain."""
    start = output_of(product)
    shape = start.meta["val"].shape
    if not all(isinstance(size, int) for size in shape):
        return None
    # normal values, and a few far out, so that an op equal to an activation only near 0 (a clamp) is not taken
    probe = 3 * torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=start.meta["val"].dtype)
    probe.view(-1)[:4] = torch.tensor([50.0, -50.0, 1e3, -1e3])[: probe.numel()]
    expected = {key: function(probe) for key, function in ACTIVATIONS.items()}
    values = {start: probe}
    node = start
    while (node := node.next).op != "root":  # the graph's nodes after `start`, in order
        if (node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload)
                or torch.Tag.pointwise not in node.target.tags
                or not node.all_input_nodes or any(arg not in values for arg in node.all_input_nodes)):
            continue
        try:
            values[node] = node.target(*torch.fx.node.map_arg(node.args, values.get),
                                       **torch.fx.node.map_arg(node.kwargs, values.get))
        except Exception:  # noqa: BLE001 - an op the probe cannot run (any reason) ends the search: nothing is fused
            return None
        for (name, algorithm), value in expected.items():
            if (isinstance(values[node], torch.Tensor) and values[node].dtype == value.dtype
                    and values[node].shape == value.shape and torch.allclose(values[node], value, rtol=1e-5, atol=1e-6)):
                chain = {product, *values}
                if all(set(member.users) <= chain for member in chain if member is not node):
                    return name, algorithm, list(values)
                return None
    return None


def fuse_activation(product: torch.fx.Node) -> None:
    """Compute the activation that follows `product` (a `vqgen::onednn_linear` node) inside it, and drop the nodes
    that computed it separately."""
    found = activation_after(product)
    if found is None:
        return
    name, algorithm, (output, *separate) = found
    product.args = (*product.args[:4], name, algorithm)
    separate[-1].replace_all_uses_with(output)
    for node in reversed(separate):
        product.graph.erase_node(node)


class OneDNNMatmuls(CustomGraphPass):
    """Inductor post-grad pass: `addmm(bias, x, w)` and `mm(x, w)` in float32, with `w` a 2-D parameter or its
    transpose, become `vqgen::onednn_linear`, with the activation that follows, if any, fused into it. Everything
    else is left to inductor."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        parameters = parameter_inputs(graph)
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target not in (aten.addmm.default, aten.mm.default):
                continue
            if node.target is aten.addmm.default:
                if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("beta", 1) != 1:
                    continue
                bias, x, right = node.args
                if bias.meta["val"].shape != node.meta["val"].shape[-1:]:  # one per output column, not broadcast
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
            fuse_activation(routed)

    def uuid(self) -> bytes:
        return get_hash_for_files((__file__,))
