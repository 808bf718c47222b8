"""Fitting by gradient descent through the renderer (the AI Studio differentiable-rendering
project): recover a perturbed rotation, translation and scale of the generated FLAME head from
its rendered image with a photometric + soft-silhouette loss."""
import numpy as np
import paddle

from ppface3d.flame import FLAME
from ppface3d.render import OrthographicCamera, Renderer


def rodrigues(r):
    """(3,) axis-angle -> (3, 3) rotation, in Paddle ops."""
    theta = paddle.sqrt((r * r).sum() + 1e-12)
    k = r / theta
    K = paddle.stack(
        [paddle.zeros([]), -k[2], k[1], k[2], paddle.zeros([]), -k[0], -k[1], k[0], paddle.zeros([])]
    ).reshape([3, 3])
    return paddle.eye(3) + paddle.sin(theta) * K + (1 - paddle.cos(theta)) * (K @ K)


def angle_between(Ra, Rb):
    c = (np.trace(Ra.T @ Rb) - 1) / 2
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


def test_recovers_pose_of_generated_head():
    paddle.seed(0)
    flame = FLAME()
    verts = flame(shape=paddle.zeros([1, 10])).vertices  # (1, V, 3), ~0.3 units tall
    v = verts[0]
    centre = (v.max(0) + v.min(0)) / 2
    v = v - centre
    vn = v.numpy()
    # a fixed colour pattern on the surface makes the photometric term informative
    colors = paddle.to_tensor(0.5 + 0.4 * np.sin(np.array([25.0, 31.0, 17.0]) * vn + np.array([0.0, 1.0, 2.0])), dtype="float32")[None]
    lights = np.zeros((1, 9, 3), np.float32)
    lights[0, 0], lights[0, 3], lights[0, 1] = 3.0, 1.0, 0.4
    lights = paddle.to_tensor(lights)
    S = 64
    renderer = Renderer(S, flame.faces, sigma=2e-4)

    def render(r, t, log_s):
        R = rodrigues(r)
        cam = paddle.concat([(5.0 * paddle.exp(log_s)).reshape([1]), t]).reshape([1, 3])
        out = renderer((v @ R.T)[None], OrthographicCamera(cam), vertex_colors=colors, lights=lights)
        return out["images"], out["fragments"].soft_alpha

    true_r = paddle.to_tensor([0.1, 0.35, -0.05])
    true_t = paddle.to_tensor([0.01, -0.02])
    true_ls = paddle.to_tensor([0.05])
    with paddle.no_grad():
        target_img, target_alpha = render(true_r, true_t, true_ls)
    # perturbation: ~12 degrees of rotation, 0.04 units (~0.2 NDC) of translation, 12% of scale
    r = paddle.create_parameter([3], "float32", default_initializer=paddle.nn.initializer.Assign(np.array([0.0, 0.15, 0.05], np.float32)))
    t = paddle.create_parameter([2], "float32", default_initializer=paddle.nn.initializer.Assign(np.array([0.04, 0.02], np.float32)))
    ls = paddle.create_parameter([1], "float32", default_initializer=paddle.nn.initializer.Assign(np.array([-0.07], np.float32)))
    R_true = rodrigues(true_r).numpy()
    start_err = angle_between(rodrigues(r).numpy(), R_true)
    opt = paddle.optimizer.Adam(learning_rate=0.01, parameters=[r, t, ls])
    for it in range(100):
        img, alpha = render(r, t, ls)
        loss = ((img - target_img) ** 2).mean() + ((alpha - target_alpha) ** 2).mean()
        loss.backward()
        opt.step()
        opt.clear_grad()
    rot_err = angle_between(rodrigues(r).numpy(), R_true)
    t_err = np.abs(t.numpy() - true_t.numpy()).max()
    s_err = abs(np.exp(ls.numpy()[0] - true_ls.numpy()[0]) - 1)
    assert start_err > 10
    # stated tolerance (measured here: about 0.15 deg, 1e-4, 0.1 % after 100 Adam steps)
    assert rot_err < 0.5, rot_err
    assert t_err < 1e-3, t_err  # world units; the head is ~0.29 tall, so < 0.4 % of its height
    assert s_err < 0.005, s_err
