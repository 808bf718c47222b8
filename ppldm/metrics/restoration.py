"""Checkers for inpainting and super-resolution, each with a classical baseline measured on the
same images: OpenCV's Telea inpainting, and bicubic upsampling (scikit-image)."""
from __future__ import annotations

import numpy as np

from ppengine.registry import METRICS

from .common import images_01, to_np


def telea_inpaint(image01: np.ndarray, mask: np.ndarray, radius: int = 3) -> np.ndarray:
    """OpenCV Telea inpainting of ``image01`` [H, W, 3] in [0, 1] where ``mask`` [H, W] > 0.5."""
    import cv2

    img8 = np.round(image01 * 255).astype(np.uint8)
    out = cv2.inpaint(img8, (mask > 0.5).astype(np.uint8), radius, cv2.INPAINT_TELEA)
    return out.astype(np.float32) / 255


@METRICS.register()
class InpaintingError:
    """Inpainting quality of ``outputs['samples']`` [B, 3, H, W] against ``batch['image']`` with
    ``batch['mask']`` [B, 1, H, W] (1 = filled in), all in [-1, 1], measured on [0, 1] pixels:

    * ``inpaint_mae_masked``: mean absolute error inside the mask (lower is better);
    * ``inpaint_mae_outside``: change outside the mask (preservation; 0 is perfect);
    * ``telea_mae_masked``: the same error for OpenCV Telea inpainting (a classical baseline).
    """

    def __init__(self, baseline: bool = True):
        self.baseline = baseline
        self.reset()

    def reset(self):
        self.sums = {"inpaint_mae_masked": 0.0, "inpaint_mae_outside": 0.0, "telea_mae_masked": 0.0}
        self.n_in = self.n_out = 0.0

    def update(self, batch, outputs):
        gen = images_01(outputs["samples"])
        ref = images_01(batch["image"])
        m = np.broadcast_to(to_np(batch["mask"]).astype(np.float32) > 0.5, gen.shape)
        err = np.abs(gen - ref)
        self.sums["inpaint_mae_masked"] += float(err[m].sum())
        self.sums["inpaint_mae_outside"] += float(err[~m].sum())
        self.n_in += m.sum()
        self.n_out += (~m).sum()
        if self.baseline:
            for g, r, mm in zip(gen, ref, m):
                t = telea_inpaint(r.transpose(1, 2, 0) * (1 - mm[0][..., None]), mm[0]).transpose(2, 0, 1)
                self.sums["telea_mae_masked"] += float(np.abs(t - r)[mm].sum())

    def compute(self):
        out = {"inpaint_mae_masked": self.sums["inpaint_mae_masked"] / max(1, self.n_in),
               "inpaint_mae_outside": self.sums["inpaint_mae_outside"] / max(1, self.n_out)}
        if self.baseline:
            out["telea_mae_masked"] = self.sums["telea_mae_masked"] / max(1, self.n_in)
        return out


def bicubic_upsample(lr01: np.ndarray, size) -> np.ndarray:
    """Bicubic upsampling of [C, h, w] in [0, 1] to [C, *size] (scikit-image, order 3)."""
    from skimage.transform import resize

    return np.clip(resize(lr01.transpose(1, 2, 0), tuple(size), order=3, mode="edge", anti_aliasing=False),
                   0, 1).transpose(2, 0, 1)


@METRICS.register()
class SuperResQuality:
    """PSNR and SSIM (scikit-image, data range 1) of ``outputs['samples']`` [B, C, H, W] against
    the high-resolution ``batch['image']``, and the same for bicubic upsampling of ``batch['lr']``."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.rows = []

    def update(self, batch, outputs):
        from skimage.metrics import peak_signal_noise_ratio as psnr
        from skimage.metrics import structural_similarity as ssim

        gen, hr, lr = images_01(outputs["samples"]), images_01(batch["image"]), images_01(batch["lr"])
        for g, h, l in zip(gen, hr, lr):
            b = bicubic_upsample(l, h.shape[1:])
            ch = dict(channel_axis=-1, data_range=1.0, win_size=7 if min(h.shape[1:]) >= 7 else 3)
            self.rows.append((psnr(h, g, data_range=1.0), ssim(h.transpose(1, 2, 0), g.transpose(1, 2, 0), **ch),
                              psnr(h, b, data_range=1.0), ssim(h.transpose(1, 2, 0), b.transpose(1, 2, 0), **ch)))

    def compute(self):
        if not self.rows:
            return {}
        r = np.asarray(self.rows, np.float64)
        r[~np.isfinite(r)] = 100.0  # identical images: PSNR is infinite, report 100 dB
        return {"psnr": float(r[:, 0].mean()), "ssim": float(r[:, 1].mean()),
                "bicubic_psnr": float(r[:, 2].mean()), "bicubic_ssim": float(r[:, 3].mean())}


@METRICS.register()
class ReconstructionQuality:
    """Autoencoder reconstructions ``outputs['samples']`` vs ``batch['image']`` (both [-1, 1]):
    ``psnr`` (dB, on [0, 1] pixels, mean over images) and ``mae``. When the batch carries
    shapes-world captions, also ``caption_acc``: the fraction of reconstructions the shapes
    checker reads fully right, and ``caption_acc_original``, the same on the input images
    (other captions, e.g. free text from a user's JSONL, are ignored)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.psnrs, self.maes = [], []
        self.read, self.read_orig = [], []

    def update(self, batch, outputs):
        g, r = images_01(outputs["samples"]), images_01(batch["image"])
        mse = ((g - r) ** 2).reshape(len(g), -1).mean(1)
        self.psnrs.extend((10 * np.log10(1.0 / np.maximum(mse, 1e-10))).tolist())
        self.maes.extend(np.abs(g - r).reshape(len(g), -1).mean(1).tolist())
        captions = batch.get("caption")
        if captions is not None and len(captions) == len(g):
            from .shapes import check_caption, parse_caption

            for gi, ri, c in zip(g, r, captions):
                if parse_caption(str(c))[0] is None:
                    continue
                self.read.append(check_caption(gi.transpose(1, 2, 0), str(c))["all"])
                self.read_orig.append(check_caption(ri.transpose(1, 2, 0), str(c))["all"])

    def compute(self):
        if not self.psnrs:
            return {}
        out = {"psnr": float(np.mean(self.psnrs)), "mae": float(np.mean(self.maes))}
        if self.read:
            out.update(caption_acc=float(np.mean(self.read)), caption_acc_original=float(np.mean(self.read_orig)))
        return out
