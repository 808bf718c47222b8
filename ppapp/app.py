"""``python tools/app.py``: the Gradio app over both zoos (this package is the one place that joins
ppface3d and ppldm on purpose).

    python tools/app.py                                  # http://127.0.0.1:7860, fitting only
    python tools/app.py --weights output/deca            # + DECA from a trained run folder
    python tools/app.py --port 7861 --max-upload-mb 10 --fit-iters 60 40

Tabs: Reconstruct, Expression transfer, Generate (the trained ppldm runs found under
``--runs``). Binds 127.0.0.1 unless ``--host`` says otherwise, never shares publicly, serves only
files under its work folder (``--workdir``, a fresh temp folder by default).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/app.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("-c", "--config", default=None, help="DECA config (for a bare weights file; FLAME/albedo paths)")
    p.add_argument("-o", "--override", action="append", default=[], help="config override key=value")
    p.add_argument("--weights", default=None, help="DECA run folder or weights file: adds the DECA model choice")
    p.add_argument("--runs", default="output/ldm", help="folder of trained ppldm runs for the Generate tab")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (MB)")
    p.add_argument("--fit-iters", type=int, nargs=2, default=[100, 0], metavar=("LANDMARK", "PHOTO"))
    p.add_argument("--fit-size", type=int, default=128)
    p.add_argument("--max-faces", type=int, default=4, help="at most this many faces per photo")
    p.add_argument("--workdir", default=None, help="folder for uploads and results (default: a new temp folder)")
    p.add_argument("--session-ttl", type=float, default=3600.0, help="seconds a visitor's files are kept")
    return p


def setup_workdir(workdir=None) -> str:
    """Create the work folder and point gradio's cache into it (before gradio is imported)."""
    work = os.path.abspath(workdir or tempfile.mkdtemp(prefix="ppapp_"))
    for sub in ("cache", "sessions", "examples"):
        os.makedirs(os.path.join(work, sub), exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(work, "cache")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return work


def write_example(work: str) -> str:
    """The bundled example photo (skimage's astronaut) as a PNG in the work folder."""
    from skimage.data import astronaut

    from ppface3d.apps.export import save_png

    path = os.path.join(work, "examples", "astronaut.png")
    if not os.path.isfile(path):
        save_png(path, astronaut())
    return path


def build_app(args, work: str):
    """The gr.Blocks app -> (demo, sessions)."""
    import gradio as gr

    from .compat import patch_gradio_client

    patch_gradio_client()
    from . import generate_tab, reconstruct_tab, transfer_tab
    from .common import Sessions
    from .face import FaceService, FaceSettings

    sessions = Sessions(os.path.join(work, "sessions"), ttl=args.session_ttl)
    service = FaceService(FaceSettings(config=args.config, weights=args.weights, overrides=tuple(args.override),
                                       fit_size=args.fit_size, fit_iters=tuple(args.fit_iters),
                                       max_faces=args.max_faces))
    example = write_example(work)
    # system fonts: the default theme would fetch Google Fonts (offline here, and a visitor's
    # browser should not call out either)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    with gr.Blocks(title="ppdigitalhuman", analytics_enabled=False, theme=theme,
                   delete_cache=(600, int(args.session_ttl))) as demo:
        gr.Markdown("# ppdigitalhuman: 3D faces (FLAME / DECA) and latent diffusion on PaddlePaddle")
        # the visitor's folder; deleted when the visitor leaves (or by the TTL sweep)
        state = gr.State(None, delete_callback=sessions.delete, time_to_live=args.session_ttl)
        reconstruct_tab.build(gr, service, sessions, args.max_upload_mb, state, example)
        transfer_tab.build(gr, service, sessions, args.max_upload_mb, state)
        generate_tab.build(gr, sessions, args.runs, state)
    return demo, sessions


def launch(demo, sessions, work: str, host: str, port: int, max_upload_mb: float, block: bool = True):
    sessions.sweep()
    sessions.start_sweeper(every=min(300.0, sessions.ttl))
    # gradio's own hard cap (the app's one-line message covers sizes up to twice the limit)
    return demo.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=False, inbrowser=False, show_api=False,
        allowed_paths=[os.path.join(work, "sessions"), os.path.join(work, "examples")],
        max_file_size=f"{int(2 * max_upload_mb * 1024 * 1024)}b", prevent_thread_lock=not block, quiet=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ppengine.errors import PPError

    work = setup_workdir(args.workdir)
    try:
        demo, sessions = build_app(args, work)
    except PPError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"app: http://{args.host}:{args.port} (files under {work}; Ctrl+C stops)", flush=True)
    launch(demo, sessions, work, args.host, args.port, args.max_upload_mb)
    return 0
