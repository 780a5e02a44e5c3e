"""The quantiser's math: distances, straight-through, which term moves what, EMA, restarts, init."""

import pytest
import torch

from stage1_tokenizer.quantizers import VectorQuantizer, VectorQuantizerConfig, codebook_usage
from stage1_tokenizer.quantizers.vector import EMA_EPSILON, kmeans, nearest_codes, squared_distances


def vq(k: int, d: int, **options) -> VectorQuantizer:
    return VectorQuantizer(VectorQuantizerConfig(codebook_size=k, **options), dim=d)


def make_quantizer(k: int = 16, d: int = 4, **options) -> VectorQuantizer:
    torch.manual_seed(0)
    options.setdefault("codebook_init", "random")
    options.setdefault("dead_code_threshold", 0.0)
    return vq(k, d, **options)


@pytest.mark.parametrize("options, message", [
    (dict(ema_decay=1.0), "ema_decay must be in"), (dict(ema_decay=-0.5), "ema_decay must be in"),
    (dict(codebook_init="zeros"), "codebook_init must be"),
])
def test_the_config_refuses_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        VectorQuantizerConfig(**options)
    assert VectorQuantizerConfig(ema_decay=0).ema_decay is None  # the command line's "learn by gradient"


def test_squared_distances_match_brute_force():
    torch.manual_seed(0)
    x, e = torch.randn(300, 8), torch.randn(40, 8)
    brute = ((x[:, None, :] - e[None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(squared_distances(x, e), brute, rtol=1e-4, atol=1e-4)
    assert torch.equal(squared_distances(x, e).argmin(1), brute.argmin(1))


def test_codes_are_nearest_and_quantized_values_are_codebook_rows():
    q = make_quantizer().eval()
    z = torch.randn(2, 4, 3, 5)
    out = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    expected = torch.cdist(flat, q.codebook.detach()).argmin(1).reshape(2, 3, 5)
    assert torch.equal(out.codes, expected)
    torch.testing.assert_close(out.quantized.permute(0, 2, 3, 1)[0, 0, 0], q.codebook[out.codes[0, 0, 0]].detach())
    assert torch.equal(q.nearest(z), out.codes)


def test_straight_through_gradient_reaches_encoder_unchanged():
    q = make_quantizer(ema_decay=None).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3)
    (q(z).quantized * upstream).sum().backward()
    # d quantized / d z is the identity under the straight-through estimator.
    torch.testing.assert_close(z.grad, upstream)


def test_codebook_term_moves_only_codebook_and_commitment_only_encoder():
    q = make_quantizer(ema_decay=None, beta=0.25).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    out.losses['codebook_loss'].backward(retain_graph=True)
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0
    assert z.grad is None or z.grad.abs().sum() == 0
    q.codebook.grad = None
    out.losses['commitment_loss'].backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert q.codebook.grad is None or q.codebook.grad.abs().sum() == 0
    # beta sits on the commitment term, not on the codebook term
    torch.testing.assert_close(out.losses['commitment_loss'], 0.25 * out.losses['codebook_loss'])


def test_ema_codebook_has_no_gradient_and_follows_the_ema_formula():
    decay, eps, k, d = 0.9, EMA_EPSILON, 4, 2
    q = make_quantizer(k=k, d=d, ema_decay=decay).train()
    q.codebook.data = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    q.cluster_size.copy_(torch.tensor([2.0, 1.0, 1.0, 0.5]))
    q.embed_sum.copy_(q.codebook.data * q.cluster_size[:, None])
    old_size, old_sum = q.cluster_size.clone(), q.embed_sum.clone()
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 1.0]])  # two to code 0, one to code 1
    z = vectors.T.reshape(1, 2, 1, 3)
    out = q(z)
    assert not q.codebook.requires_grad
    assert out.codes.flatten().tolist() == [0, 0, 1]
    counts = torch.tensor([2.0, 1.0, 0.0, 0.0])
    sums = torch.tensor([[1.0, 1.0], [9.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    size = decay * old_size + (1 - decay) * counts
    embed_sum = decay * old_sum + (1 - decay) * sums
    n = size.sum()
    smoothed = (size + eps) / (n + k * eps) * n
    torch.testing.assert_close(q.cluster_size, size)
    torch.testing.assert_close(q.embed_sum, embed_sum)
    torch.testing.assert_close(q.codebook.data, embed_sum / smoothed[:, None])
    torch.testing.assert_close(out.counts, counts)


def test_dead_codes_restart_from_current_encoder_outputs():
    q = make_quantizer(k=8, d=3, ema_decay=0.99, dead_code_threshold=1.0).train()
    q.cluster_size.fill_(5.0)
    q.cluster_size[[2, 5]] = 0.0  # two dead codes
    z = torch.randn(4, 3, 2, 2) + 100.0  # far from every code, so restarted rows are recognisable
    q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    for row in (2, 5):
        assert (q.codebook.data[row] - flat).abs().sum(1).min() < 1e-5, "restarted code is not an encoder output"
        assert q.cluster_size[row] == pytest.approx(1.0)
    assert (q.codebook.data[[0, 1, 3, 4, 6, 7]].abs() < 50).all(), "live codes must not be replaced"


@pytest.mark.parametrize("init", ["kmeans", "data"])
def test_data_driven_init_happens_once_and_uses_the_batch(init):
    torch.manual_seed(0)
    centers = torch.randn(8, 4) * 10
    z = (centers[torch.randint(0, 8, (512,))] + 0.01 * torch.randn(512, 4)).T.reshape(1, 4, 16, 32)
    q = vq(8, 4, codebook_init=init, dead_code_threshold=0.0).train()
    assert not q.initialized
    q(z)
    assert q.initialized
    # every code lies on (or at the mean of) the data, not at its tiny random initial value
    dist = torch.cdist(q.codebook.data, centers).min(1).values
    assert dist.max() < 1.0
    if init == "kmeans":
        usage, _ = codebook_usage(torch.bincount(q.nearest(z).flatten(), minlength=8))
        assert usage == 1.0  # k-means on well-separated clusters finds all eight


def test_kmeans_centroids_are_cluster_means():
    torch.manual_seed(0)
    x = torch.randn(200, 3)
    centroids, sizes = kmeans(x, 5, iters=20)
    assign = squared_distances(x, centroids).argmin(1)
    for j in range(5):
        if sizes[j] > 0:
            torch.testing.assert_close(centroids[j], x[assign == j].mean(0), rtol=1e-4, atol=1e-4)
    assert sizes.sum() == 200


def test_tokenizing_has_no_side_effects_even_in_train_mode():
    q = make_quantizer(ema_decay=0.99).train()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.nearest(torch.randn(2, 4, 3, 3))
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_l2_normalised_codes_have_unit_norm():
    q = make_quantizer(l2_normalize=True, ema_decay=0.99).train()
    out = q(torch.randn(2, 4, 3, 3) * 7)
    torch.testing.assert_close(out.quantized.norm(dim=1), torch.ones(2, 3, 3), rtol=1e-5, atol=1e-5)


def test_quantizer_runs_in_float32_under_autocast():
    q = make_quantizer().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(torch.randn(2, 4, 3, 3).bfloat16())
    assert out.quantized.dtype == torch.float32 and out.losses['commitment_loss'].dtype == torch.float32


def test_lookup_rejects_codes_outside_the_codebook():
    q = make_quantizer(k=16)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        q.lookup(torch.tensor([[[16]]]))
    with pytest.raises(TypeError, match="integer"):
        q.lookup(torch.tensor([[[1.0]]]))


def test_usage_and_perplexity():
    assert codebook_usage(torch.ones(8)) == pytest.approx((1.0, 8.0))
    usage, perplexity = codebook_usage(torch.tensor([4.0, 4.0, 0.0, 0.0]))
    assert usage == 0.5 and perplexity == pytest.approx(2.0)


# -- blocked nearest-code search, branch-free restarts, torch.compile ------------------------------------
def test_nearest_codes_in_blocks_match_one_distance_matrix():
    torch.manual_seed(0)
    x, e = torch.randn(300, 8), torch.randn(40, 8)
    brute = ((x[:, None, :] - e[None, :, :]) ** 2).sum(-1).argmin(1)
    for block_bytes in (1, 4 * 40 * 7, 4 * 40 * 300, 2**30):  # one row, 7 rows (ragged last block), all rows
        assert torch.equal(nearest_codes(x, e, max_block_bytes=block_bytes), brute)
    # the custom operator that torch.compile sees: its fake (shape) implementation agrees with the real one
    torch.library.opcheck(torch.ops.vqgen.nearest_codes.default, (x, e, 4 * 40 * 7))


def test_forward_and_nearest_search_in_bounded_blocks(monkeypatch):
    """No n x K matrix larger than the block budget is made, in forward or in `nearest`."""
    import stage1_tokenizer.quantizers.vector as vector

    q = make_quantizer(k=64, d=4, dead_code_threshold=1.0).train()
    z = torch.randn(4, 4, 5, 5)  # 100 vectors
    monkeypatch.setattr(vector, "BLOCK_BYTES_CPU", 4 * 64 * 16)  # 16 rows of 64 codes
    seen = []
    addmm = torch.addmm
    monkeypatch.setattr(vector.torch, "addmm", lambda *a, **k: seen.append(a[1].shape[0]) or addmm(*a, **k))
    q(z)
    assert max(seen) <= 16 and sum(seen) == 100
    seen.clear()
    q.nearest(z)
    assert max(seen) <= 16 and sum(seen) == 100


def test_restarts_draw_the_same_randoms_whatever_the_number_of_dead_codes():
    """Branch-free restarts: the random stream advances by codebook_size draws every step, so a resumed
    run draws what an uninterrupted one does, however many codes are dead."""
    z = torch.randn(2, 4, 3, 3)
    states = []
    for num_dead in (0, 3, 16):
        q = make_quantizer(ema_decay=0.99, dead_code_threshold=1.0).train()
        q.cluster_size.fill_(5.0)
        q.cluster_size[:num_dead] = 0.0
        torch.manual_seed(1)
        q(z)
        states.append(torch.get_rng_state())
    assert all(torch.equal(states[0], s) for s in states[1:])


def test_save_load_resume_is_bit_identical():
    torch.manual_seed(0)
    zs = [torch.randn(2, 4, 3, 3) for _ in range(4)]
    q = vq(16, 4, codebook_init="kmeans", dead_code_threshold=1.0).train()
    q(zs[0])
    saved, rng = {k: v.clone() for k, v in q.state_dict().items()}, torch.get_rng_state()
    first = [q(z).codes for z in zs[1:]]
    resumed = vq(16, 4, codebook_init="kmeans", dead_code_threshold=1.0).train()
    resumed.load_state_dict(saved)  # `initialized` comes back: no second k-means
    torch.set_rng_state(rng)
    second = [resumed(z).codes for z in zs[1:]]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in q.state_dict().items())


def test_loading_an_uninitialised_state_makes_the_next_training_call_initialise():
    fresh = vq(8, 4, codebook_init="kmeans").state_dict()
    q = vq(8, 4, codebook_init="kmeans").train()
    q(torch.randn(1, 4, 8, 8))
    assert q.initialized
    q.load_state_dict(fresh)
    assert not q.initialized
    q(torch.randn(1, 4, 8, 8) + 50.0)
    assert q.initialized and (q.codebook.data.mean(1) > 40).all()


def _explain(fn, *args):
    torch._dynamo.reset()
    try:
        return torch._dynamo.explain(fn)(*args)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("kwargs", [{}, {"l2_normalize": True}, {"ema_decay": None}, {"dead_code_threshold": 0.0},
                                    {"rotation_trick": True}, {"rotation_trick": True, "l2_normalize": True,
                                                               "ema_decay": None}])
def test_forward_after_initialisation_is_one_graph_without_breaks(kwargs):
    kwargs = {"dead_code_threshold": 1.0, **kwargs}
    q = vq(16, 4, codebook_init="kmeans", **kwargs).train()
    z = torch.randn(2, 4, 3, 3)
    q.initialize_(z)
    for mode in (True, False):
        q.train(mode)
        explanation = _explain(q, z)
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    assert _explain(q.nearest, z).graph_break_count == 0


def _compiled_against_eager(backend: str, l2_normalize: bool, monkeypatch, steps: int = 3,
                            rotation_trick: bool = False) -> list[str]:
    """Train an eager quantiser and a compiled copy side by side; return what differed (empty: nothing)."""
    import copy

    import stage1_tokenizer.quantizers.vector as vector

    monkeypatch.setattr(vector, "BLOCK_BYTES_CPU", 4 * 16 * 5)  # blocks of 5 rows: both blocked paths run
    torch.manual_seed(0)
    zs = [torch.randn(2, 4, 3, 3) for _ in range(steps + 1)]
    eager = vq(16, 4, codebook_init="data", dead_code_threshold=1.0, l2_normalize=l2_normalize,
               rotation_trick=rotation_trick).train()
    eager.initialize_(zs[0])
    eager.cluster_size[:5] = 0.0  # dead: the restart path runs in the very first compiled step
    copied = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(copied, fullgraph=True, backend=backend)
    differences = []

    def compare(name: str, a: torch.Tensor, b: torch.Tensor, exact: bool = False) -> None:
        same = torch.equal(a, b) if exact else torch.allclose(a, b, rtol=1.3e-6, atol=1e-5)
        if not same:
            differences.append(name)

    try:
        for step, z in enumerate(zs[1:]):
            z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
            torch.manual_seed(step)
            a = eager(z1)
            torch.manual_seed(step)
            b = compiled(z2)
            compare(f"codes {step}", a.codes, b.codes, exact=True)
            compare(f"quantized {step}", a.quantized.detach(), b.quantized.detach())
            compare(f"counts {step}", a.counts, b.counts)
            compare(f"commitment {step}", a.losses["commitment_loss"].detach(), b.losses["commitment_loss"].detach())
            (a.quantized.square().sum() + a.losses["commitment_loss"]).backward()
            (b.quantized.square().sum() + b.losses["commitment_loss"]).backward()
            compare(f"gradient {step}", z1.grad, z2.grad)
        for name, value in eager.state_dict().items():  # codebook, cluster_size, embed_sum, initialized
            compare(name, value.float(), copied.state_dict()[name].float())
    finally:
        torch._dynamo.reset()
    return differences


@pytest.mark.parametrize("rotation_trick", [False, True])
@pytest.mark.parametrize("l2_normalize", [False, True])
@pytest.mark.integration
def test_compiled_training_steps_match_eager_ones(l2_normalize, rotation_trick, monkeypatch):
    # aot_eager traces the whole step (dynamo + AOT autograd, buffer mutations functionalised) without
    # inductor's code generation; the inductor test below checks the generated code too (~15-20 s on 2 CPU cores).
    assert _compiled_against_eager("aot_eager", l2_normalize, monkeypatch, rotation_trick=rotation_trick) == []


@pytest.mark.parametrize("rotation_trick", [False, True])
@pytest.mark.integration
def test_inductor_compiled_training_steps_match_eager_ones(rotation_trick, monkeypatch):
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):  # eager's random stream, so the restarts agree
        assert _compiled_against_eager("inductor", True, monkeypatch, rotation_trick=rotation_trick) == []


@pytest.mark.integration
def test_compiling_without_fullgraph_initialises_eagerly_on_the_first_call():
    torch.manual_seed(0)
    q = vq(8, 4, codebook_init="kmeans").train()
    torch._dynamo.reset()
    try:
        compiled = torch.compile(q, backend="aot_eager")
        compiled(torch.randn(1, 4, 8, 8) + 50.0)
        assert q.initialized and (q.codebook.data.mean(1) > 40).all()
    finally:
        torch._dynamo.reset()
