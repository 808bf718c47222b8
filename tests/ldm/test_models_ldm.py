"""ppldm.models: UNet, attention forms, AutoencoderKL, VQModel against independent references."""
import numpy as np
import paddle
import pytest
from random_weights import randomize as _randomize

from ppengine.errors import ConfigError, InputError
from ppldm.models import Attention, AutoencoderKL, DiagonalGaussian, UNet, VQModel, set_attention_type


def small_unet(**kw):
    args = dict(block_channels=(16, 32), layers_per_block=1, attention_resolutions=(1, 2), head_channels=8,
                context_dim=12, norm_groups=8)
    args.update(kw)
    return UNet(**args)


def randomize(model, seed=0, scale=0.2):
    return _randomize(model, seed, scale, eval=False)


def np_attention(x, ctx, wq, wk, wv, wo, bo, heads):
    """Reference multi-head attention in numpy; weights in Paddle (in, out) layout."""
    q, k, v = x @ wq, ctx @ wk, ctx @ wv
    b, s, inner = q.shape
    d = inner // heads
    split = lambda a: a.reshape(b, a.shape[1], heads, d).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    w = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = (w @ v).transpose(0, 2, 1, 3).reshape(b, s, inner)
    return o @ wo + bo


@pytest.mark.parametrize("attention_type", ["standard", "split_einsum"])
def test_attention_matches_numpy(attention_type):
    attn = randomize(Attention(8, 6, heads=2, dim_head=4, attention_type=attention_type), seed=1)
    x = np.random.RandomState(2).standard_normal((2, 5, 8)).astype("float32")
    c = np.random.RandomState(3).standard_normal((2, 3, 6)).astype("float32")
    out = attn(paddle.to_tensor(x), paddle.to_tensor(c)).numpy()
    ref = np_attention(x, c, attn.to_q.weight.numpy(), attn.to_k.weight.numpy(), attn.to_v.weight.numpy(),
                       attn.to_out[0].weight.numpy(), attn.to_out[0].bias.numpy(), 2)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_unet_shapes_and_split_einsum_equal():
    paddle.seed(0)
    net = randomize(small_unet()).eval()
    x, c = paddle.randn([2, 4, 8, 8]), paddle.randn([2, 5, 12])
    out = net(x, paddle.to_tensor([3, 700]), c)
    assert out.shape == [2, 4, 8, 8]
    set_attention_type(net, "split_einsum")
    out2 = net(x, paddle.to_tensor([3, 700]), c)
    np.testing.assert_allclose(out2.numpy(), out.numpy(), atol=1e-5)
    # the timestep and the context both change the output
    assert float((net(x, paddle.to_tensor([4, 700]), c) - out2).abs().max()) > 1e-4
    assert float((net(x, paddle.to_tensor([3, 700]), c * 2) - out2).abs().max()) > 1e-4


def test_unet_class_and_concat_conditioning():
    paddle.seed(0)
    net = randomize(small_unet(num_classes=10, concat_channels=3, context_dim=None, out_channels=4)).eval()
    x, cc = paddle.randn([2, 4, 8, 8]), paddle.randn([2, 3, 8, 8])
    a = net(x, 5, class_labels=paddle.to_tensor([1, 2]), concat=cc)
    b = net(x, 5, class_labels=paddle.to_tensor([1, 3]), concat=cc)
    assert a.shape == [2, 4, 8, 8]
    np.testing.assert_allclose(a[0].numpy(), b[0].numpy(), atol=1e-6)   # per-sample conditioning
    assert float((a[1] - b[1]).abs().max()) > 1e-4
    assert net.conv_in.weight.shape[1] == 7
    with pytest.raises(InputError, match="concat"):
        net(x, 5, class_labels=paddle.to_tensor([1, 2]))
    with pytest.raises(InputError, match="class_labels"):
        net(x, 5, concat=cc)


def test_unet_bad_input_and_config_errors():
    net = small_unet()
    with pytest.raises(InputError, match="divisible by 2"):
        net(paddle.randn([1, 4, 7, 8]), 1, paddle.randn([1, 5, 12]))
    with pytest.raises(InputError, match=r"\(B, 4, H, W\)"):
        net(paddle.randn([1, 3, 8, 8]), 1, paddle.randn([1, 5, 12]))
    with pytest.raises(InputError, match="context"):
        net(paddle.randn([1, 4, 8, 8]), 1, paddle.randn([1, 5, 11]))
    with pytest.raises(InputError, match="pass context"):
        net(paddle.randn([1, 4, 8, 8]), 1)
    with pytest.raises(ConfigError, match="attention_type"):
        small_unet(attention_type="flash")
    with pytest.raises(ConfigError, match="num_heads"):
        small_unet(head_channels=None, num_heads=[1, 2, 3])


def test_unet_traces_with_to_static():
    paddle.seed(0)
    net = randomize(small_unet()).eval()
    x, t, c = paddle.randn([1, 4, 8, 8]), paddle.to_tensor([10.0]), paddle.randn([1, 5, 12])
    eager = net(x, t, c).numpy()
    spec = [paddle.static.InputSpec([1, 4, 8, 8], "float32"), paddle.static.InputSpec([1], "float32"),
            paddle.static.InputSpec([1, 5, 12], "float32")]
    static = paddle.jit.to_static(net, input_spec=spec, full_graph=True)
    np.testing.assert_allclose(static(x, t, c).numpy(), eager, atol=1e-5)


def test_sincos_2d_against_numpy():
    from ppldm.models.attention import sincos_2d

    h, w, dim = 4, 8, 18                       # 4 frequencies x (sin, cos) x (x, y) + 2 zero channels
    pe = sincos_2d(h, w, dim).numpy()
    freqs = np.pi * 4.0 ** (np.arange(4) / 3)       # pi .. pi * max(h, w) / 2
    ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    ax, ay = xs.reshape(-1, 1) * freqs, ys.reshape(-1, 1) * freqs
    ref = np.concatenate([np.sin(ax), np.cos(ax), np.sin(ay), np.cos(ay), np.zeros((h * w, 2))], 1)
    np.testing.assert_allclose(pe, ref, atol=1e-5)
    d = ((pe[:, None] - pe[None]) ** 2).sum(-1)
    assert d[~np.eye(h * w, dtype=bool)].min() > 0.1         # every position has its own code


def test_unet_position_encoding_option():
    paddle.seed(0)
    off = randomize(small_unet()).eval()
    on = small_unet(position_encoding="sincos").eval()
    assert [p.shape for p in on.parameters()] == [p.shape for p in off.parameters()]   # no new weights
    on.set_state_dict(off.state_dict())
    assert off.config["position_encoding"] is None and on.config["position_encoding"] == "sincos"
    x, t, c = paddle.randn([2, 4, 8, 8]), paddle.to_tensor([3, 700]), paddle.randn([2, 5, 12])
    a, b = off(x, t, c), on(x, t, c)
    assert float((a - b).abs().max()) > 1e-3                  # the encoding reaches the output
    # off is the former behaviour: a default-built UNet with the same weights gives the same numbers
    again = small_unet(position_encoding=None).eval()
    again.set_state_dict(off.state_dict())
    np.testing.assert_allclose(again(x, t, c).numpy(), a.numpy(), atol=0)
    # a SpatialTransformer on a constant map: the same output at every pixel without the encoding
    # (attention alone cannot tell places apart), a different one at every pixel with it
    from ppldm.models.attention import SpatialTransformer

    st_off = randomize(SpatialTransformer(16, 2, 8, context_dim=12, groups=8), seed=3).eval()
    st_on = SpatialTransformer(16, 2, 8, context_dim=12, groups=8, position_encoding="sincos").eval()
    st_on.set_state_dict(st_off.state_dict())
    const = paddle.ones([1, 16, 4, 4]) * paddle.arange(16, dtype="float32").reshape([1, 16, 1, 1])
    y_off = st_off(const, c[:1]).numpy().reshape(16, 16).T       # (pixels, channels)
    y_on = st_on(const, c[:1]).numpy().reshape(16, 16).T
    assert np.abs(y_off - y_off[0]).max() < 1e-4
    d = ((y_on[:, None] - y_on[None]) ** 2).sum(-1)
    assert d[~np.eye(16, dtype=bool)].min() > 1e-4
    spec = [paddle.static.InputSpec([2, 4, 8, 8], "float32"), paddle.static.InputSpec([2], "float32"),
            paddle.static.InputSpec([2, 5, 12], "float32")]
    static = paddle.jit.to_static(on, input_spec=spec, full_graph=True)
    np.testing.assert_allclose(static(x, t.astype("float32"), c).numpy(), b.numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="position_encoding"):
        small_unet(position_encoding="learned")


@pytest.mark.parametrize("levels,factor", [((8, 16, 16), 4), ((8, 8, 16, 16), 8)])
def test_autoencoder_kl_factor_and_posterior(levels, factor):
    paddle.seed(0)
    vae = AutoencoderKL(block_channels=levels, layers_per_block=1, latent_channels=3, norm_groups=4)
    x = paddle.randn([2, 3, 16, 16])
    post = vae.encode(x)
    assert vae.downsample_factor == factor and post.mean.shape == [2, 3, 16 // factor, 16 // factor]
    rec, post = vae(x)
    assert rec.shape == [2, 3, 16, 16]
    with pytest.raises(InputError, match=f"divisible by {factor}"):
        vae.encode(paddle.randn([1, 3, 16 + factor // 2, 16]))


def test_diagonal_gaussian_against_numpy():
    rng = np.random.RandomState(0)
    m = rng.standard_normal((3, 4, 2, 2)).astype("float32")
    post = DiagonalGaussian(paddle.to_tensor(m))
    mu, lv = m[:, :2], m[:, 2:]
    kl = 0.5 * (mu ** 2 + np.exp(lv) - 1 - lv).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(post.kl().numpy(), kl, rtol=1e-5)
    x = rng.standard_normal(mu.shape).astype("float32")
    nll = 0.5 * (np.log(2 * np.pi) + lv + (x - mu) ** 2 / np.exp(lv)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(post.nll(paddle.to_tensor(x)).numpy(), nll, rtol=1e-5)
    paddle.seed(1)
    big = DiagonalGaussian(paddle.to_tensor(np.concatenate([np.full((1, 1, 64, 64), 2.0),
                                                           np.full((1, 1, 64, 64), np.log(0.25))], 1).astype("float32")))
    s = big.sample().numpy()
    assert abs(s.mean() - 2.0) < 0.05 and abs(s.std() - 0.5) < 0.05


def test_vq_quantizer_against_numpy_and_usage():
    paddle.seed(0)
    vq = VQModel(block_channels=(8, 8), layers_per_block=1, latent_channels=3, num_codes=6, norm_groups=4)
    q = vq.quantize
    rng = np.random.RandomState(0)
    q.embedding.weight.set_value(rng.standard_normal((6, 3)).astype("float32"))
    z = rng.standard_normal((2, 3, 4, 4)).astype("float32")
    zt = paddle.to_tensor(z, stop_gradient=False)
    q.train()
    out, loss, info = q(zt)
    flat = z.transpose(0, 2, 3, 1).reshape(-1, 3)
    codes = q.embedding.weight.numpy()
    idx = ((flat[:, None, :] - codes[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(info["indices"].numpy().reshape(-1), idx)
    zq = codes[idx].reshape(2, 4, 4, 3).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out.numpy(), zq, atol=1e-6)
    mse = ((zq - z) ** 2).mean()
    np.testing.assert_allclose(float(loss), mse * (1 + 0.25), rtol=1e-5)
    out.sum().backward()                                     # straight-through: d out / d z = 1
    np.testing.assert_allclose(zt.grad.numpy(), np.ones_like(z))
    assert q.usage() == pytest.approx(len(set(idx)) / 6)
    q.reset_usage()
    assert q.usage() == 0.0
    rec, loss, info = vq(paddle.randn([1, 3, 8, 8]))
    assert rec.shape == [1, 3, 8, 8] and info["indices"].shape == [1, 4, 4]
    np.testing.assert_allclose(vq.decode_indices(info["indices"]).numpy(), rec.numpy(), atol=1e-5)
