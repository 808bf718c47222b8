"""Benchmark: ppface3d.render vs Mesa's software OpenGL (pyrender + OSMesa), same run.

For a FLAME-size mesh (the generated FLAME head: 4,970 vertices, 9,824 faces) at 224x224 and
512x512, batch 1 and 8, prints one JSON line per case with the median milliseconds of

* ``raster_ms``:   ppface3d.render.rasterize (C++ operator) alone,
* ``forward_ms``:  the full Renderer forward (raster + normals + interpolation + SH shading),
* ``backward_ms``: backward of a photometric loss through that render to the vertices,
* ``peer_ms``:     pyrender/OSMesa rendering colour + depth of the same mesh (new vertex positions
  uploaded for every image, as a fitting loop would do), read back to numpy,
* ``peer_static_ms``: the same with the meshes already uploaded (render + read back only: the
  peer's best case),

and ``ratio = forward_ms / peer_ms``, ``ratio_static = forward_ms / peer_static_ms`` (goal:
forward within 2x of the peer), ``raster_ratio_static = raster_ms / peer_static_ms``. Run:

    PYOPENGL_PLATFORM=osmesa OMP_NUM_THREADS=2 .venv/bin/python bench/render.py [--repeats 10]

Needs the peer: ``apt-get install libosmesa6`` and ``pip install -r requirements-bench.txt --no-deps``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import numpy as np  # noqa: E402
import paddle  # noqa: E402


def timed(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def head_mesh():
    from ppface3d.flame import FLAME

    flame = FLAME()
    v = flame(shape=paddle.zeros([1, 10])).vertices[0].numpy()
    v = v - (v.max(0) + v.min(0)) / 2
    return v.astype(np.float32), np.asarray(flame.faces, np.int64)


def make_peer(size):
    try:
        import pyrender
        import trimesh
    except Exception as e:  # pragma: no cover - depends on the machine
        return None, f"pyrender unavailable: {e}"
    try:
        r = pyrender.OffscreenRenderer(size, size)
    except Exception as e:  # pragma: no cover
        return None, f"OSMesa unavailable: {type(e).__name__}: {e}"

    def scene_of(v, faces, colors, half_extent):
        scene = pyrender.Scene(ambient_light=[0.3, 0.3, 0.3], bg_color=[0, 0, 0, 0])
        tm = trimesh.Trimesh(v, faces, vertex_colors=colors, process=False)
        scene.add(pyrender.Mesh.from_trimesh(tm, smooth=True))
        cam = pyrender.OrthographicCamera(xmag=half_extent, ymag=half_extent, znear=0.01, zfar=10.0)
        pose = np.eye(4)
        pose[2, 3] = 2.0
        scene.add(cam, pose=pose)
        scene.add(pyrender.DirectionalLight(intensity=2.0), pose=pose)
        return scene

    def render(vertices_list, faces, colors, half_extent):
        """New vertex positions every image (as in a fitting loop): build, upload, render."""
        return [r.render(scene_of(v, faces, colors, half_extent)) for v in vertices_list]

    def render_static(scenes):
        """Meshes already uploaded: rasterize, shade and read back only."""
        return [r.render(sc) for sc in scenes]

    return (render, r, scene_of, render_static), "pyrender-osmesa"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args(argv)

    from ppface3d.render import OrthographicCamera, Renderer, rasterize

    v, f = head_mesh()
    rng = np.random.default_rng(0)
    colors = rng.uniform(0.3, 1.0, size=(len(v), 3)).astype(np.float32)
    scale = 1.8 / float((v.max(0) - v.min(0))[:2].max())
    lights = np.zeros((1, 9, 3), np.float32)
    lights[0, 0], lights[0, 3] = 3.0, 1.0
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    for size in args.sizes:
        peer, peer_name = make_peer(size)
        for B in args.batches:
            # slightly different poses per image, as in a batch of fits
            angles = np.linspace(-0.3, 0.3, B)
            verts = np.stack([v @ np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]).T for a in angles]).astype(np.float32)
            V = paddle.to_tensor(verts)
            cam = OrthographicCamera(np.tile([[scale, 0.0, 0.0]], (B, 1)).astype(np.float32))
            renderer = Renderer(size, f, backend="cpp")
            C = paddle.to_tensor(np.tile(colors[None], (B, 1, 1)))
            L = paddle.to_tensor(np.tile(lights, (B, 1, 1)))
            screen = cam.transform(V)
            reps = max(3, args.repeats if size * size * B <= 224 * 224 * 8 else args.repeats // 2)
            with paddle.no_grad():
                raster_ms = timed(lambda: rasterize(screen, f, size, backend="cpp").pix_to_face.numpy(), reps)
                forward_ms = timed(lambda: renderer(V, cam, vertex_colors=C, lights=L)["images"].numpy(), reps)
            Vg = paddle.to_tensor(verts, stop_gradient=False)
            target = paddle.zeros([B, 3, size, size])

            def fwd_bwd():
                img = renderer(Vg, cam, vertex_colors=C, lights=L)["images"]
                ((img - target) ** 2).mean().backward()
                Vg.clear_gradient()

            fb_ms = timed(fwd_bwd, reps)
            rec = {
                "bench": "render",
                "mesh": f"generated FLAME head ({len(v)} vertices, {len(f)} faces)",
                "size": size,
                "batch": B,
                "threads": int(threads),
                "raster_ms": round(raster_ms, 2),
                "forward_ms": round(forward_ms, 2),
                "backward_ms": round(fb_ms - forward_ms, 2),
                "peer": peer_name,
            }
            if peer is not None:
                render, _, scene_of, render_static = peer
                # pyrender's frame: y up, camera looking down -z from z = 2
                half = 1.0 / scale
                peer_ms = timed(lambda: render(list(verts), f, colors, half), reps)
                scenes = [scene_of(vb, f, colors, half) for vb in verts]
                static_ms = timed(lambda: render_static(scenes), reps)
                rec.update(
                    peer_ms=round(peer_ms, 2),
                    ratio=round(forward_ms / peer_ms, 3),
                    peer_static_ms=round(static_ms, 2),
                    ratio_static=round(forward_ms / static_ms, 3),
                    raster_ratio_static=round(raster_ms / static_ms, 3),
                )
            print(json.dumps(rec), flush=True)
        if peer is not None:
            peer[1].delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
