"""The quantiser's math: distances, straight-through, which term moves what, EMA, restarts, init."""

import pytest
import torch

from stage1_tokenizer.quantizers import VectorQuantizer, codebook_usage
from stage1_tokenizer.quantizers.vector import kmeans, squared_distances


def make_quantizer(**kwargs) -> VectorQuantizer:
    torch.manual_seed(0)
    kwargs.setdefault("init", "random")
    kwargs.setdefault("dead_code_threshold", 0.0)
    return VectorQuantizer(codebook_size=kwargs.pop("k", 16), dim=kwargs.pop("d", 4), **kwargs)


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
    decay, eps, k, d = 0.9, 1e-5, 4, 2
    q = make_quantizer(k=k, d=d, ema_decay=decay, epsilon=eps).train()
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
    q = VectorQuantizer(8, 4, init=init, dead_code_threshold=0.0).train()
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
