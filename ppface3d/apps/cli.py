"""``python tools/infer.py face3d``: reconstruct faces from an image, a folder or a video.

    python tools/infer.py face3d --image photo.jpg                       # fitting, no network
    python tools/infer.py face3d --image photos/ --weights output/deca          # a trained run folder
    python tools/infer.py face3d --image photos/ -c configs/deca.yml --weights output/deca/best.safetensors
    python tools/infer.py face3d --image clip.mp4 --every 5 --max-frames 40
    python tools/infer.py face3d --image target.jpg --transfer-from source.jpg --animation mp4
    python tools/infer.py face3d --video clip.mp4 [-c configs/track.yml] [--track-id 1] [--filter one_euro]
    python tools/infer.py face3d --images a.jpg b.jpg c.jpg --fuse          # one head from several photos
    python tools/infer.py face3d --image photo.jpg --model mica --weights output/mica [--base output/deca]

Per face, in ``OUTPUT/<image>[_face<i>]/``: codes.npz, mesh.obj (+ mesh.png texture,
mesh_normals.png normal map, mesh.mtl), mesh.glb, shape.png, textured.png, overlay.png (on the
original photo), landmarks.png; with --transfer-from also transfer_*.png/.obj and
transfer.gif|mp4. A photo that can't be used gets a one-line reason; the others go on.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List

import numpy as np

from ppengine.errors import PPError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/infer.py face3d", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", "-i", default=None, help="an image, a folder of images, or a video (frame by frame)")
    p.add_argument("--video", default=None, help="track one face through a video or a folder of frames "
                                                 "(ppface3d/apps/track.py; -c/-o then address configs/track.yml)")
    p.add_argument("--track-id", type=int, default=None, help="--video: track the k-th largest face (0: largest)")
    p.add_argument("--filter", choices=["none", "one_euro"], default=None, help="--video: causal one-euro filter")
    p.add_argument("--images", nargs="+", default=None, help="photos of one person (with --fuse)")
    p.add_argument("--fuse", action="store_true", help="fuse --images (or the photos of --image FOLDER) into one "
                                                        "head: shared shape and albedo, merged photo texture")
    p.add_argument("--output", "-O", default="output/face3d_infer", help="output folder")
    p.add_argument("-c", "--config", default=None, help="DECA config (for a bare weights file, or for FLAME/albedo "
                                                        "paths when fitting)")
    p.add_argument("-o", "--override", action="append", default=[], help="config override key=value")
    p.add_argument("--weights", default=None, help="a trained run folder (output/deca: its config.yml + weights) or "
                                                   "weights file; default: fit each face")
    p.add_argument("--model", choices=["deca", "mica"], default="deca",
                   help="deca: codes from --weights (a DECA-family run) or the fitter; mica: the shape from MICA "
                        "(--weights a MICA run, or -c configs/mica_release.yml with mica.tar), the other codes "
                        "from --base or the fitter")
    p.add_argument("--base", default=None, help="with --model mica: a DECA run folder (or weights file) for "
                                                "expression, pose, camera, albedo and light; default: the fitter")
    p.add_argument("--transfer-from", default=None, help="source photo whose expression and jaw pose are "
                                                         "put on each target face")
    p.add_argument("--animation", choices=["gif", "mp4"], default="gif", help="transfer animation format")
    p.add_argument("--frames", type=int, default=16, help="frames of the transfer animation")
    p.add_argument("--fit-iters", type=int, nargs=2, default=[100, 0], metavar=("LANDMARK", "PHOTO"),  # fit.DEFAULT_ITERS
                   help="Adam steps of the two fitting stages")
    p.add_argument("--fit-size", type=int, default=128, help="fitting resolution")
    p.add_argument("--every", type=int, default=5, help="video: use every N-th frame")
    p.add_argument("--max-frames", type=int, default=30, help="video: at most this many frames")
    p.add_argument("--max-faces", type=int, default=None, help="at most this many faces per image (largest)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def _sources(path: str, every: int, max_frames: int):
    """Yield (name, path-or-array) for an image, a folder, or a video's frames."""
    from ..data.io import IMAGE_EXTS, VIDEO_EXTS, list_images

    if os.path.isdir(path):
        files = list_images(path)
        if not files:
            raise PPError(f"{path}: no images ({', '.join(IMAGE_EXTS)}) in this folder")
        for f in files:
            yield os.path.splitext(os.path.relpath(f, path))[0].replace(os.sep, "_"), f
        return
    if not os.path.exists(path):
        raise PPError(f"{path}: no such file or folder")
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTS:
        import imageio.v3 as iio

        stem = os.path.splitext(os.path.basename(path))[0]
        n = 0
        try:
            for i, frame in enumerate(iio.imiter(path)):
                if i % max(1, every):
                    continue
                yield f"{stem}_frame{i:05d}", np.asarray(frame)
                n += 1
                if n >= max_frames:
                    break
        except Exception as e:
            if n == 0:
                raise PPError(f"{path}: cannot read the video ({type(e).__name__}: {e})") from None
            print(f"{path}: video ended early after {n} frames ({type(e).__name__})", file=sys.stderr)
        return
    yield os.path.splitext(os.path.basename(path))[0], path


def run_track(args) -> int:
    from .track import track_video

    ov = list(args.override)
    if args.track_id is not None:
        ov.append(f"track.track_id={args.track_id}")
    if args.filter is not None:
        ov.append(f"track.filter={args.filter}")
    if getattr(args, "model", "deca") == "mica":  # MICA's shape for the clip (--weights: a MICA run)
        ov += ["track.identity=mica"] + ([f"track.mica_weights={args.weights}"] if args.weights else [])
    stem = os.path.splitext(os.path.basename(os.path.normpath(args.video)))[0]
    out = os.path.join(args.output, f"{stem}_track")
    files = track_video(args.video, out, config=args.config, overrides=ov, show_progress=not args.no_progress)
    for k, v in files.items():
        print(f"{k}: {v}")
    return 0


def run_fuse(args) -> int:
    from ..data.io import list_images
    from .fuse import fuse_photos

    sources = list(args.images or [])
    if args.image:
        sources += list_images(args.image) if os.path.isdir(args.image) else [args.image]
    if len(sources) < 1:
        raise PPError("--fuse needs photos: --images a.jpg b.jpg ... or --image FOLDER")
    files = fuse_photos(sources, os.path.join(args.output, "fused"), progress=not args.no_progress)
    print(f"{len(sources)} photo(s) fused -> {os.path.dirname(files[0])}")
    return 0


def run(args) -> int:
    from tqdm import tqdm

    if args.video:
        return run_track(args)
    if args.fuse or args.images:
        if not args.fuse:
            raise PPError("--images goes with --fuse (one head from several photos); one photo: --image")
        return run_fuse(args)
    if not args.image:
        raise PPError("give --image (a photo, folder or video), --video (tracking) or --images ... --fuse")

    from ..data.preprocess import FacePreprocessor
    from .export import save_animation, save_obj, save_png
    from .reconstruct import FaceReconstructor

    pre = FacePreprocessor(crop_size=224, scale=1.25, max_faces=args.max_faces)
    if args.model == "mica":
        from .mica_reconstruct import MICAReconstructor, load_mica

        rec = MICAReconstructor(load_mica(args.weights, args.config, args.override), base=args.base,
                                fit_size=args.fit_size, fit_iters=tuple(args.fit_iters), progress=not args.no_progress)
    else:
        if args.base:
            raise PPError("--base goes with --model mica")
        rec = FaceReconstructor(config=args.config, weights=args.weights, overrides=args.override,
                                fit_size=args.fit_size, fit_iters=tuple(args.fit_iters), progress=not args.no_progress)
    source_codes = None
    if args.transfer_from:
        r = pre(args.transfer_from)
        if not r.ok:
            raise PPError(f"--transfer-from: {r.summary()}")
        source_codes = rec.codes(r.faces[0])
    os.makedirs(args.output, exist_ok=True)
    done, failed = 0, 0
    video_frames: List[np.ndarray] = []
    items = list(_sources(args.image, args.every, args.max_frames))
    for name, src in tqdm(items, desc="images", disable=args.no_progress or len(items) < 2):
        r = pre(src, name=name if not isinstance(src, str) else src)
        if r.messages:
            print(r.summary(), file=sys.stderr)
        if not r.ok:
            failed += 1
            continue
        for k, face in enumerate(r.faces):
            folder = os.path.join(args.output, name if len(r.faces) == 1 else f"{name}_face{k}")
            codes = rec.codes(face)
            rec.save(face, codes, folder, r.original)
            if not isinstance(src, str) and len(r.faces) >= 1 and k == 0:
                video_frames.append(rec.overlay(face, rec.decode(codes), r.original))
            if source_codes is not None:
                tc = rec.transfer(source_codes, codes)
                dec = rec.decode(tc)
                save_png(os.path.join(folder, "transfer_textured.png"), dec["textured"])
                save_png(os.path.join(folder, "transfer_shape.png"), dec["shape"])
                save_png(os.path.join(folder, "transfer_overlay.png"), rec.overlay(face, dec, r.original))
                save_obj(os.path.join(folder, "transfer.obj"), dec["vertices"], rec.face.faces,
                         rec.face.uv_coords, rec.face.uv_faces)
                frames = rec.transfer_animation(face, codes, source_codes, r.original, args.frames)
                save_animation(os.path.join(folder, f"transfer.{args.animation}"), frames)
            print(f"{name}: face {k} -> {folder}")
            done += 1
    if len(video_frames) > 1:
        stem = os.path.splitext(os.path.basename(args.image))[0]
        save_animation(os.path.join(args.output, f"{stem}_overlay.mp4"), video_frames, fps=8)
    print(f"{done} face(s) reconstructed, {failed} input(s) without a usable face -> {args.output}")
    return 0 if done else 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except PPError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
