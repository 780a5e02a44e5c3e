"""The rotation trick (Fifty et al. 2024): the value is the code, the gradient is rotated and rescaled.

For an encoder output e and its code q, the transform is (||q|| / ||e||) R e with
R = I - 2 r r^T + 2 q^ e^T, r = (e^ + q^) / ||e^ + q^||, held constant: the encoder receives
(||q|| / ||e||) R^T g for the upstream gradient g. The explicit `d d` matrices below are the
definition that `rotate_onto`'s matrix-free form is checked against.
"""

import pytest
import torch
from torch.func import jvp

from stage1_tokenizer import VQVAE, VectorQuantizer, VectorQuantizerConfig, load_pretrained
from stage1_tokenizer.quantizers.vector import rotate_onto
from stage1_tokenizer.train import build_model, parse_args


def explicit_rotation(e: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's `d d` rotation R and scale ||q|| / ||e|| for single vectors e, q (float64)."""
    e_hat, q_hat = e / e.norm(), q / q.norm()
    r = (e_hat + q_hat) / (e_hat + q_hat).norm()
    eye = torch.eye(e.shape[0], dtype=e.dtype)
    return eye - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat), q.norm() / e.norm()


def angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise angle between `n d` vectors, in radians."""
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.arccos(cos.clamp(-1, 1))


def rotated_gradient(e: torch.Tensor, q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The gradient `rotate_onto` passes to e for the upstream gradient g."""
    e = e.clone().requires_grad_()
    (rotate_onto(e, q) * g).sum().backward()
    return e.grad


def make_pair(**kwargs) -> tuple[VectorQuantizer, VectorQuantizer]:
    """A plain VQ and a rotation-trick VQ with the same codebook."""
    torch.manual_seed(0)
    options = dict(codebook_size=16, codebook_init="random", dead_code_threshold=0.0, **kwargs)
    plain = VectorQuantizer(VectorQuantizerConfig(**options), dim=4)
    rotated = VectorQuantizer(VectorQuantizerConfig(**options, rotation_trick=True), dim=4)
    rotated.load_state_dict(plain.state_dict())
    return plain, rotated


SETTINGS = [{}, {"ema_decay": None}, {"l2_normalize": True}, {"l2_normalize": True, "ema_decay": None}]


@pytest.mark.parametrize("kwargs", SETTINGS)
def test_forward_is_plain_vq_and_the_value_is_the_code(kwargs):
    plain, rotated = make_pair(**kwargs)
    z = torch.randn(2, 4, 3, 5) * 3
    for mode in (True, False):  # training (codebook updates) and evaluation
        a, b = plain.train(mode)(z), rotated.train(mode)(z.clone().requires_grad_())
        assert torch.equal(a.codes, b.codes) and torch.equal(a.counts, b.counts)
        assert a.losses.keys() == b.losses.keys()
        assert all(torch.equal(a.losses[k], b.losses[k].detach()) for k in a.losses)
        torch.testing.assert_close(b.quantized.detach(), a.quantized)
    assert torch.equal(b.quantized.detach(), rotated.lookup(b.codes))  # exactly the code: no rounding
    assert all(torch.equal(v, rotated.state_dict()[k]) for k, v in plain.state_dict().items())


@pytest.mark.parametrize("kwargs", SETTINGS)
def test_the_encoder_gradient_differs_from_straight_through(kwargs):
    plain, rotated = make_pair(**kwargs)
    z = torch.randn(2, 4, 3, 5) * 3
    upstream = torch.randn(2, 4, 3, 5)
    grads = []
    for q in (plain.eval(), rotated.eval()):
        zi = z.clone().requires_grad_()
        (q(zi).quantized * upstream).sum().backward()
        grads.append(zi.grad)
    assert torch.isfinite(grads[1]).all()
    assert not torch.allclose(grads[0], grads[1], atol=1e-3)


def test_the_quantiser_gradient_is_the_rotated_and_rescaled_upstream_gradient():
    _, q = make_pair(ema_decay=None)
    z = torch.randn(2, 4, 3, 5, dtype=torch.float32) * 3
    zi = z.clone().requires_grad_()
    upstream = torch.randn(2, 4, 3, 5)
    out = q.eval()(zi)
    (out.quantized * upstream).sum().backward()
    flat_e = z.permute(0, 2, 3, 1).reshape(-1, 4).double()
    flat_q = q.lookup(out.codes).permute(0, 2, 3, 1).reshape(-1, 4).double()
    flat_g = upstream.permute(0, 2, 3, 1).reshape(-1, 4).double()
    expected = []
    for e, code, g in zip(flat_e, flat_q, flat_g):
        rotation, scale = explicit_rotation(e, code)
        torch.testing.assert_close(scale * rotation @ e, code)  # the transform maps e onto q
        expected.append(scale * rotation.T @ g)
    expected = torch.stack(expected).reshape(2, 3, 5, 4).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(zi.grad, expected, rtol=1e-4, atol=1e-5)
    # the rotation trick changes only the encoder's gradient: the reconstruction path never reaches the codebook
    assert q.codebook.grad is None or not q.codebook.grad.any()


def test_rotate_onto_matches_the_explicit_matrices_and_maps_e_to_q():
    torch.manual_seed(1)
    e, q, g = (torch.randn(64, 6, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(rotate_onto(e, q), q)
    grad = rotated_gradient(e, q, g)
    for i in range(len(e)):
        rotation, scale = explicit_rotation(e[i], q[i])
        torch.testing.assert_close(rotation.T @ rotation, torch.eye(6, dtype=torch.float64))  # a rotation...
        assert torch.linalg.det(rotation).item() == pytest.approx(1.0)  # ...not a reflection
        torch.testing.assert_close(grad[i], scale * rotation.T @ g[i])


def test_angles_are_preserved_and_lengths_rescaled():
    """The paper's property: the transform takes e onto q and any v at angle t to e onto a vector at
    angle t to q, scaled by ||q|| / ||e||; backwards, the gradient at e makes with e the angle that the
    upstream gradient makes with q."""
    torch.manual_seed(2)
    e, q, v = (torch.randn(128, 8, dtype=torch.float64) for _ in range(3))
    scale = q.norm(dim=1) / e.norm(dim=1)
    _, image = jvp(lambda x: rotate_onto(x, q), (e,), (v,))  # the transform is linear: its image of v
    torch.testing.assert_close(angle(image, q), angle(v, e))
    torch.testing.assert_close(image.norm(dim=1), scale * v.norm(dim=1))
    grad = rotated_gradient(e, q, v)
    torch.testing.assert_close(angle(grad, e), angle(v, q))
    torch.testing.assert_close(grad.norm(dim=1), scale * v.norm(dim=1))
    # straight-through keeps the gradient's direction instead, so its angle to e is not the one to q
    assert not torch.allclose(angle(v, e), angle(v, q))


def test_degenerate_rows_give_finite_gradients():
    torch.manual_seed(3)
    q = torch.randn(4, 5)
    e = torch.stack([torch.zeros(5), 1e-9 * q[1], -0.5 * q[2], q[3] * 2])  # zero, tiny, antipodal, parallel
    g = torch.randn(4, 5)
    torch.testing.assert_close(rotate_onto(e, q)[2:], q[2:])
    grad = rotated_gradient(e, q, g)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad[:2], g[:2])  # no direction to rotate from: straight through
    # antipodal: the reflection taking e^ onto -e^, still angle-preserving and rescaled by ||q|| / ||e|| = 2
    torch.testing.assert_close(angle(grad[2:3], e[2:3]), angle(g[2:3], q[2:3]))
    torch.testing.assert_close(grad[2].norm(), 2 * g[2].norm())
    torch.testing.assert_close(grad[3], 0.5 * g[3])  # already aligned: R = I, only the rescaling


def test_the_option_is_a_flag_saved_with_the_tokenizer_and_absent_means_off(tmp_path):
    model = build_model(parse_args(["--rotation_trick", "--codebook_size", "16"]), 28, 1, None)
    assert model.quantizer.config.rotation_trick
    model.save_pretrained(tmp_path)
    again = load_pretrained(tmp_path)
    assert isinstance(again, VQVAE) and again.quantizer.config.rotation_trick
    # a config.json written before the option existed
    old = {k: v for k, v in vars(VectorQuantizerConfig()).items() if k != "rotation_trick"}
    assert VectorQuantizerConfig(**old).rotation_trick is False
