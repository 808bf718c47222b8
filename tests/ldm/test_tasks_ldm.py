"""Every ppldm task config trains (2 steps), evaluates with its checker and samples through the
infer CLI; the autoencoder trainer's KL/VQ/GAN steps; task-specific sampling behaviour."""
import json
import os

import numpy as np
import paddle
import pytest
from PIL import Image

import ppldm  # noqa: F401
from ppengine import Trainer, load_config
from ppengine.checkpoint import save_weights
from ppengine.errors import InputError
from ppengine.trainer import build_model
from ppldm.pipelines.cli import main as infer_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = os.path.join(ROOT, "configs", "ldm")

SMALL = ["train.max_iters=2", "train.eval_interval=2", "train.save_interval=0", "train.eval_batches=1",
         "train.progress=false", "train.log_images=false", "data.batch_size=4", "data.eval_batch_size=4",
         "model.sampler.steps=2", "train.ema_decay=null"]
SHAPES_SMALL = ["data.train.num_samples=8", "data.val.num_samples=4"]
TASKS = {
    "class2img_digits": [],
    "uncond_digits": [],
    "txt2img_shapes": SHAPES_SMALL,
    "txt2img_shapes_plain": SHAPES_SMALL,
    "layout2img_shapes": SHAPES_SMALL,
    "inpaint_shapes": SHAPES_SMALL,
    "sr_shapes": ["data.train.base.num_samples=8", "data.val.base.num_samples=4"],
    "sr_shapes_pixel": ["data.train.base.num_samples=8", "data.val.base.num_samples=4"],
}
METRIC_KEYS = {"class2img_digits": "digit_acc", "uncond_digits": "fid", "txt2img_shapes": "caption_acc",
               "txt2img_shapes_plain": "caption_acc",
               "layout2img_shapes": "box_iou", "inpaint_shapes": "inpaint_mae_masked", "sr_shapes": "psnr",
               "sr_shapes_pixel": "psnr"}


@pytest.fixture(scope="module")
def ae_weights(tmp_path_factory):
    """Untrained first stages with the configs' architectures (weights only need to exist)."""
    d = tmp_path_factory.mktemp("ae")
    out = {}
    for name in ("ae_digits", "ae_shapes"):
        cfg = load_config(os.path.join(CFG, f"{name}.yml"))
        paddle.seed(0)
        model = build_model(cfg)
        out[name] = str(d / f"{name}.safetensors")
        save_weights(out[name], model)
    return out


def _task_cfg(task, ae_weights, tmp_path, extra=()):
    ae = ae_weights["ae_digits" if "digits" in task else "ae_shapes"]
    return load_config(os.path.join(CFG, f"{task}.yml"),
                       SMALL + TASKS[task] + [f"model.autoencoder.weights={ae}", f"train.output={tmp_path}/{task}"]
                       + list(extra))


@pytest.mark.parametrize("task", list(TASKS))
def test_task_trains_evaluates_and_infers(task, ae_weights, tmp_path):
    cfg = _task_cfg(task, ae_weights, tmp_path)
    t = Trainer(cfg)
    logs = t.train()
    assert np.isfinite(logs["loss"])
    run = tmp_path / task
    assert (run / "final.safetensors").is_file() and (run / "config.yml").is_file()
    # evaluate as tools/eval.py does: a fresh Trainer with model.weights
    metrics = Trainer(_task_cfg(task, ae_weights, tmp_path, [f"model.weights={run}/final.safetensors"])).evaluate()
    assert METRIC_KEYS[task] in metrics and np.isfinite(metrics[METRIC_KEYS[task]])
    # the CLI rebuilds the model from the run folder alone (its config.yml) and writes a PNG grid
    args = ["--weights", str(run), "-n", "2", "--steps", "2", "--output", str(tmp_path / "infer")]
    rgb = (np.random.default_rng(0).uniform(0, 255, (32, 32, 3))).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    if task.startswith("class2img"):
        args += ["--class", "3", "5"]
    elif task.startswith("txt2img"):
        args += ["--prompt", "a red circle left of a blue square"]
    elif task.startswith("layout"):
        (tmp_path / "boxes.json").write_text(json.dumps([["red circle", 0.1, 0.1, 0.4, 0.4], [7, 0.5, 0.5, 0.9, 0.9]]))
        args += ["--boxes", str(tmp_path / "boxes.json")]
    elif task.startswith("inpaint"):
        m = np.zeros((32, 32), np.uint8)
        m[8:20, 8:20] = 255
        Image.fromarray(m).save(tmp_path / "mask.png")
        args += ["--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png")]
    elif task.startswith("sr"):
        Image.fromarray(rgb[:8, :8]).save(tmp_path / "lr.png")
        args += ["--lowres", str(tmp_path / "lr.png")]
    assert infer_main(args) == 0
    img = np.asarray(Image.open(tmp_path / "infer" / "grid.png"))
    assert img.ndim == 3 and img.shape[2] == 3 and img.std() > 0
    samples = sorted(p for p in os.listdir(tmp_path / "infer") if p.startswith("sample_"))
    assert len(samples) == (4 if task.startswith("class2img") else 2), samples  # -n 2 per condition
    size = 16 if "digits" in task else 32
    assert np.asarray(Image.open(tmp_path / "infer" / samples[0])).shape[:2] == (size, size)
    if task == "class2img_digits":  # with -c (and a weights file) it still works
        args = ["-c", os.path.join(CFG, f"{task}.yml"), "--weights", str(run / "final.safetensors"), "-n", "2",
                "--steps", "2", "--output", str(tmp_path / "infer_c"), "--class", "3", "5",
                "-o", f"model.autoencoder.weights={ae_weights['ae_digits']}"]
        assert infer_main(args) == 0 and (tmp_path / "infer_c" / "grid.png").is_file()


def test_cli_reports_missing_inputs(ae_weights, tmp_path, capsys):
    cfg = _task_cfg("inpaint_shapes", ae_weights, tmp_path)
    model = build_model(cfg)
    save_weights(str(tmp_path / "w.safetensors"), model)
    base = ["-c", os.path.join(CFG, "inpaint_shapes.yml"), "--weights", str(tmp_path / "w.safetensors"),
            "-o", f"model.autoencoder.weights={ae_weights['ae_shapes']}"]
    assert infer_main(base + ["--image", "nope.png"]) == 2
    assert "--mask" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert infer_main(base + ["--image", str(tmp_path / "bad.png"), "--mask", str(tmp_path / "bad.png")]) == 2
    assert "could not be read" in capsys.readouterr().err
    assert infer_main(["-c", os.path.join(CFG, "layout2img_shapes.yml"), "--weights", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


def test_missing_first_stage_is_a_clear_error(tmp_path):
    cfg = load_config(os.path.join(CFG, "class2img_digits.yml"), [f"model.autoencoder.weights={tmp_path}/none.safetensors"])
    model = build_model(cfg)
    with pytest.raises(InputError, match="Train the first stage"):
        model({"image": paddle.zeros([2, 1, 16, 16]), "label": paddle.to_tensor([1, 2])})


def test_inpainting_paste_keeps_known_pixels_and_sampling_is_seeded(ae_weights, tmp_path):
    model = build_model(_task_cfg("inpaint_shapes", ae_weights, tmp_path))
    model.eval()
    img = paddle.to_tensor(np.random.default_rng(1).uniform(-1, 1, (2, 3, 32, 32)).astype("float32"))
    mask = np.zeros((2, 1, 32, 32), np.float32)
    mask[:, :, 4:20, 8:24] = 1
    batch = {"image": img, "mask": paddle.to_tensor(mask)}
    a = model.generate(batch, steps=2, seed=3, paste=True).numpy()
    b = model.generate(batch, steps=2, seed=3, paste=False).numpy()
    keep = np.broadcast_to(mask < 0.5, a.shape)
    np.testing.assert_allclose(a[keep], (img.numpy()[keep] + 1) / 2, atol=1e-6)  # generate(): [0, 1]
    np.testing.assert_allclose(a[~keep], b[~keep], atol=1e-5)
    c = model.generate(batch, steps=2, seed=4, paste=False).numpy()
    assert not np.allclose(b, c)


def test_inpainting_training_caches_image_and_masked_latents_by_index(ae_weights, tmp_path):
    """With cache_latents, a training batch's image and masked-image moments are encoded once per
    dataset index; the cached concat equals a freshly encoded one; sampling never reads the cache."""
    model = build_model(_task_cfg("inpaint_shapes", ae_weights, tmp_path))
    model.train()
    rng = np.random.default_rng(2)
    img = paddle.to_tensor(rng.uniform(-1, 1, (3, 3, 32, 32)).astype("float32"))
    mask = np.zeros((3, 1, 32, 32), np.float32)
    mask[:, :, 6:22, 4:18] = 1
    batch = {"image": img, "mask": paddle.to_tensor(mask), "masked_image": img * (1 - paddle.to_tensor(mask)),
             "index": paddle.to_tensor([5, 9, 11])}
    calls = []
    orig = model._moments
    model._moments = lambda x: (calls.append(int(x.shape[0])), orig(x))[1]
    model.forward(batch)
    assert calls == [3, 3]  # image and masked image, each encoded once
    assert sorted(model._latent_cache) == sorted(model._masked_cache) == [5, 9, 11]
    cached = model.concat_input(batch, 16, 16).numpy()
    assert calls == [3, 3]  # the concat came from the cache
    model.cache_latents = False
    fresh = model.concat_input(batch, 16, 16).numpy()
    assert calls == [3, 3, 3]
    np.testing.assert_allclose(cached, fresh, rtol=1e-5, atol=1e-5)
    model.cache_latents = True
    model.eval()
    model.concat_input(batch, 16, 16)
    assert calls == [3, 3, 3, 3]  # not training: encoded, not looked up


def test_guidance_uses_the_null_condition(ae_weights, tmp_path):
    model = build_model(_task_cfg("class2img_digits", ae_weights, tmp_path))
    model.eval()
    batch = {"label": paddle.to_tensor([1, 8])}
    g1 = model.generate(batch, size=16, steps=2, guidance_scale=1.0, seed=0).numpy()
    g3 = model.generate(batch, size=16, steps=2, guidance_scale=3.0, seed=0).numpy()
    assert not np.allclose(g1, g3)
    # cond_drop_prob = 1 trains only the null class: the context of every sample is the null embedding
    ctx = model.conditioner([1, 8], drop=np.array([True, True])).numpy()
    np.testing.assert_allclose(ctx[0], model.conditioner.embedding.weight.numpy()[10][None], atol=1e-6)


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_autoencoder_trainer_steps_with_discriminator(kind):
    from ppldm.models.autoencoder_trainer import AutoencoderTrainer

    paddle.seed(0)
    ae = {"type": kind, "in_channels": 3, "out_channels": 3, "block_channels": [8, 16], "layers_per_block": 1,
          "latent_channels": 4, "norm_groups": 4, "mid_attention": False}
    if kind == "vq":
        ae.update(num_codes=16)
    m = AutoencoderTrainer(ae, disc={"start": 2, "weight": 0.5, "channels": 8, "layers": 2})
    groups = m.param_groups()
    opts = {"ae": paddle.optimizer.Adam(parameters=groups["ae"], learning_rate=1e-3),
            "disc": paddle.optimizer.Adam(parameters=groups["disc"], learning_rate=1e-3)}
    x = paddle.to_tensor(np.random.default_rng(0).uniform(-1, 1, (4, 3, 16, 16)).astype("float32"))
    d0 = [p.numpy().copy() for p in groups["disc"]]
    logs1 = m.train_step({"image": x}, opts, 1)
    assert "d_loss" not in logs1 and all(np.array_equal(a, p.numpy()) for a, p in zip(d0, groups["disc"]))
    logs2 = m.train_step({"image": x}, opts, 2)
    assert {"g_loss", "d_loss", "d_weight", "perceptual", "l1"} <= set(logs2)
    assert ("kl" if kind == "kl" else "vq") in logs2
    assert not all(np.array_equal(a, p.numpy()) for a, p in zip(d0, groups["disc"]))
    assert all(np.isfinite(float(v)) for v in logs2.values())
    assert m.eval_step({"image": x})["samples"].shape == [4, 3, 16, 16]


def test_minilm_text_config_trains_only_the_projection_and_unet(ae_weights, tmp_path):
    from ppldm.data import ShapesWorld

    cfg = load_config(os.path.join(CFG, "txt2img_shapes_minilm.yml"),
                      [f"model.autoencoder.weights={ae_weights['ae_shapes']}"])
    model = build_model(cfg)
    model.train()
    trainable = {id(p) for p in model.parameters() if not p.stop_gradient}
    assert not any(id(p) in trainable for p in model.conditioner.bert.parameters())
    assert all(id(p) in trainable for p in model.conditioner.proj.parameters())
    ds = ShapesWorld("val", size=32, num_samples=2)
    items = [ds[i] for i in range(2)]
    batch = {"image": paddle.to_tensor(np.stack([i["image"] for i in items])),
             "caption": [i["caption"] for i in items], "index": paddle.to_tensor([0, 1])}
    out = model(batch)
    out["loss"].backward()
    assert np.isfinite(float(out["loss"])) and model.conditioner.proj.weight.grad is not None


def test_ldm_on_a_vq_first_stage(tmp_path):
    from ppldm.models.autoencoder_trainer import AutoencoderTrainer
    from ppldm.models.ldm import LatentDiffusion

    ae = {"type": "vq", "in_channels": 3, "out_channels": 3, "block_channels": [8, 16], "layers_per_block": 1,
          "latent_channels": 4, "embed_dim": 3, "num_codes": 16, "norm_groups": 4, "mid_attention": False}
    paddle.seed(0)
    save_weights(str(tmp_path / "vq.safetensors"), AutoencoderTrainer(ae))
    m = LatentDiffusion({**ae, "weights": str(tmp_path / "vq.safetensors")},
                        unet={"block_channels": [16, 32], "layers_per_block": 1, "attention_resolutions": [2],
                              "head_channels": 8, "norm_groups": 8},
                        conditioner={"type": "ClassEmbedder", "n_classes": 3, "embed_dim": 8})
    x = paddle.to_tensor(np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype("float32"))
    m.train()
    out = m({"image": x, "label": paddle.to_tensor([0, 2])})
    assert out["x_t"].shape == [2, 3, 8, 8] and np.isfinite(float(out["loss"]))
    m.eval()
    assert m.generate({"label": paddle.to_tensor([1])}, size=16, steps=2).shape == [1, 3, 16, 16]
