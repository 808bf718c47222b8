"""ppldm.diffusion: schedules, objective, condition dropout, latent scale, samplers."""
import numpy as np
import paddle
import pytest

from ppengine.errors import ConfigError, InputError
from ppldm.diffusion import GaussianDiffusion, LatentScale, drop_condition, make_scheduler, sample


def ref_alphas_cumprod(schedule, T, b0, b1):
    """Closed-form schedules (latent-diffusion's make_beta_schedule / improved DDPM's cosine)."""
    if schedule == "linear":
        betas = np.linspace(b0, b1, T)
    elif schedule == "scaled_linear":
        betas = np.linspace(b0 ** 0.5, b1 ** 0.5, T) ** 2
    else:
        f = lambda t: np.cos((t / T + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
        betas = np.minimum(1 - f(np.arange(1, T + 1)) / f(np.arange(T)), 0.999)
    return np.cumprod(1 - betas)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
def test_beta_schedules(schedule):
    d = GaussianDiffusion(1000, schedule, 1e-4, 2e-2)
    np.testing.assert_allclose(d.alphas_cumprod.numpy(), ref_alphas_cumprod(schedule, 1000, 1e-4, 2e-2),
                               rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("pred", ["eps", "v", "x0"])
def test_targets_and_x0_recovery(pred):
    d = GaussianDiffusion(100, "linear", 1e-3, 2e-2, prediction_type=pred)
    rng = np.random.RandomState(0)
    x0, eps = rng.standard_normal((3, 2, 4, 4)).astype("float32"), rng.standard_normal((3, 2, 4, 4)).astype("float32")
    t = np.array([0, 50, 99])
    abar = ref_alphas_cumprod("linear", 100, 1e-3, 2e-2)[t].reshape(-1, 1, 1, 1)
    xt_ref = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    target_ref = {"eps": eps, "x0": x0, "v": np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0}[pred]
    X0, E, T = paddle.to_tensor(x0), paddle.to_tensor(eps), paddle.to_tensor(t)
    xt = d.q_sample(X0, T, E)
    np.testing.assert_allclose(xt.numpy(), xt_ref, atol=1e-5)
    target = d.target(X0, E, T)
    np.testing.assert_allclose(target.numpy(), target_ref, atol=1e-5)
    np.testing.assert_allclose(d.predict_x0(xt, T, target).numpy(), x0, atol=1e-3)
    # an oracle model has zero loss; a wrong one has the numpy MSE
    oracle = lambda x, tt: paddle.to_tensor(target_ref)  # noqa: E731
    assert float(d.training_losses(oracle, X0, T, E)["loss"]) < 1e-10
    zero = lambda x, tt: paddle.zeros_like(x)  # noqa: E731
    np.testing.assert_allclose(float(d.training_losses(zero, X0, T, E)["loss"]), (target_ref ** 2).mean(), rtol=1e-5)


def test_training_step_reduces_loss_of_unet():
    from ppldm.models import UNet

    paddle.seed(0)
    net = UNet(block_channels=(8, 16), layers_per_block=1, attention_resolutions=(2,), head_channels=8,
               context_dim=6, norm_groups=4)
    d = GaussianDiffusion(100, "linear", 1e-3, 2e-2, prediction_type="v")
    opt = paddle.optimizer.Adam(1e-3, parameters=net.parameters())
    x0, ctx = paddle.randn([4, 4, 8, 8]), paddle.randn([4, 3, 6])
    t, eps = paddle.to_tensor([5, 30, 60, 90]), paddle.randn([4, 4, 8, 8])
    losses = []
    for _ in range(8):
        out = d.training_losses(net, x0, t, eps, context=ctx)
        out["loss"].backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(out["loss"]))
    assert losses[-1] < 0.8 * losses[0]


def test_drop_condition():
    cond = paddle.arange(24, dtype="float32").reshape([4, 2, 3]) + 1
    null = paddle.zeros([2, 3])
    np.testing.assert_array_equal(drop_condition(cond, null, 0.0).numpy(), cond.numpy())
    assert float(drop_condition(cond, null, 1.0).abs().sum()) == 0
    keep = paddle.to_tensor([True, False, True, False])
    out = drop_condition(cond, null, 0.5, keep=keep).numpy()
    np.testing.assert_array_equal(out[[0, 2]], cond.numpy()[[0, 2]])
    assert np.all(out[[1, 3]] == 0)
    labels = paddle.to_tensor([1, 2, 3, 4])
    np.testing.assert_array_equal(drop_condition(labels, 10, 0.5, keep=keep).numpy(), [1, 10, 3, 10])
    paddle.seed(0)
    frac = float((drop_condition(paddle.ones([4000]), 0.0, 0.1) == 0).astype("float32").mean())
    assert abs(frac - 0.1) < 0.02
    with pytest.raises(ConfigError):
        drop_condition(cond, null, 1.5)


def test_latent_scale():
    fixed = LatentScale(0.5)
    z = paddle.randn([2, 4, 4, 4]) * 3
    assert fixed.fit(z) == 0.5
    np.testing.assert_allclose(fixed.unscale(fixed.scale(z)).numpy(), z.numpy(), atol=1e-6)
    s = LatentScale(scale_by_std=True)
    f = s.fit(z)
    np.testing.assert_allclose(f, 1.0 / z.numpy().std(ddof=1), rtol=1e-4)
    assert s.fit(z * 10) == f                      # fitted once, then kept
    assert float(s.scale(z).std()) == pytest.approx(1.0, rel=1e-3)
    restored = LatentScale(scale_by_std=True)
    restored.set_state_dict(s.state_dict())
    assert restored.fit(z * 10) == pytest.approx(f)


def test_make_scheduler_errors():
    with pytest.raises(ConfigError, match="ddim"):
        make_scheduler("ddmi")
    with pytest.raises(ConfigError, match="scaled_linear"):
        make_scheduler("ddim", beta_schedule="scaled_linaer")
    with pytest.raises(ConfigError, match="takes no argument"):
        make_scheduler("ddim", not_an_arg=1)
    with pytest.raises(InputError):
        sample(lambda x, t: x, make_scheduler("ddim"), [4, 8, 8])


# set_alpha_to_one=True makes DDIM/PLMS's last step land on a clean sample (SD's default, like
# ppdiffusers 0.29's DPM-Solver++, stops at t=0, i.e. keeps sqrt(1 - abar_0) ~ 0.03 of the noise:
# there the tolerance is 5 such noise standard deviations, and the mean must still be close).
@pytest.mark.parametrize("name,steps,kw,tol", [("ddpm", 50, {}, 1e-3), ("ddim", 20, {"set_alpha_to_one": True}, 1e-3),
                                               ("plms", 20, {"set_alpha_to_one": True}, 0.02),
                                               ("dpm_solver++", 10, {}, 0.15)])
@pytest.mark.parametrize("pred", ["eps", "v"])
def test_samplers_reach_point_mass(name, steps, kw, tol, pred):
    """For data x0 = c (a point mass) the ideal denoiser is known in closed form; every sampler
    must end at c, and classifier-free guidance combines the two branches as documented."""
    d = GaussianDiffusion(1000, "scaled_linear", 0.00085, 0.012, prediction_type=pred)
    abar = d.alphas_cumprod

    def ideal(x, t, target):
        a = paddle.gather(abar, t.astype("int64")).reshape([-1, 1, 1, 1])
        eps = (x - a.sqrt() * target) / (1 - a).sqrt()
        return eps if pred == "eps" else a.sqrt() * eps - (1 - a).sqrt() * target

    c_cond, c_uncond, w = 0.6, -0.2, 2.0
    # the x0 that guidance aims at: eps-guidance is linear in the target for a point mass
    expected = c_uncond + w * (c_cond - c_uncond)
    model = lambda x, t, y: ideal(x, t, y)  # noqa: E731
    sched = d.scheduler(name, **kw)
    out = sample(model, sched, [2, 1, 4, 4], cond={"y": paddle.full([2, 1, 1, 1], c_cond)},
                 uncond={"y": paddle.full([2, 1, 1, 1], c_uncond)}, guidance_scale=w,
                 num_inference_steps=steps, seed=0, progress=False, generator=paddle.Generator().manual_seed(0))
    np.testing.assert_allclose(out.numpy(), expected, atol=tol)
    assert abs(float(out.mean()) - expected) < 0.02
