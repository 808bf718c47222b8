"""Reconstruct tab: photos -> the textured head in a 3D viewer, renders and downloads."""
from __future__ import annotations

import os
import uuid
from typing import List, Optional

from ppengine.errors import InputError

from .common import MODEL_LOCK, Sessions, take_upload


def reconstruct(service, sessions: Sessions, max_mb: float, uploads, choice: str, folder: Optional[str],
                progress=None):
    """Reconstruct every face of every upload into the visitor's folder.

    Returns ``(folder, results, lines)``: results a list of ``(label, files)`` (files from
    :meth:`FaceService.reconstruct`), lines the one-line messages for the page. A bad upload
    gives its line and the others go on; InputError when nothing was given.
    """
    folder = sessions.ensure(folder)
    uploads = [u for u in (uploads or []) if u is not None]
    if not uploads:
        raise InputError("no photo: upload one or more photos (or press 'Astronaut example')")
    job = os.path.join(folder, "reconstruct_" + uuid.uuid4().hex[:8])
    lines: List[str] = []
    results = []
    with MODEL_LOCK:
        rec = service.reconstructor(choice)
        for i, up in enumerate(uploads):
            if progress is not None:
                progress(i / len(uploads), desc=f"photo {i + 1}/{len(uploads)}: finding faces")
            try:
                path = take_upload(up, job, max_mb)
            except InputError as e:
                lines.append(str(e))
                continue
            name = os.path.basename(path)
            r, msg = service.detect(path, name)
            if msg:
                lines.append(msg)
            for k, face in enumerate(r.faces):
                label = os.path.splitext(name)[0] + (f"_face{k}" if len(r.faces) > 1 else "")
                if progress is not None:
                    progress(i / len(uploads), desc=f"{label}: reconstructing")
                out = service.reconstruct(rec, face, r.original, os.path.join(job, label))
                results.append((label, out))
                lines.append(f"{name}: face {k} reconstructed")
    return folder, results, lines


def outputs_for_page(results):
    """(glb of the first face, gallery items, download files) for the page."""
    if not results:
        return None, [], []
    gallery, downloads = [], []
    for label, out in results:
        gallery += [(out[k], f"{label}: {k}") for k in ("overlay", "textured", "shape", "landmarks")]
        downloads += [out["obj_zip"], out["glb"], out["codes"]]
    return results[0][1]["glb"], gallery, downloads


def build(gr, service, sessions: Sessions, max_mb: float, state, example: str):
    """The tab's components and events (inside a ``gr.Blocks``)."""
    from ppengine.errors import PPError

    with gr.Tab("Reconstruct 重建"):
        gr.Markdown("Upload one or more photos. Each face is reconstructed as a FLAME head with its photo "
                    f"texture (uploads up to {max_mb:g} MB).")
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Photos", file_count="multiple", elem_id="rec-files")
                choice = gr.Radio(service.choices(), value=service.choices()[0], label="Model")
                with gr.Row():
                    run = gr.Button("Reconstruct", variant="primary", elem_id="rec-run")
                    ex = gr.Button("Astronaut example", elem_id="rec-example")
                status = gr.Textbox(label="Messages", lines=3, interactive=False, elem_id="rec-status")
            with gr.Column(scale=2):
                viewer = gr.Model3D(label="3D head (GLB)", clear_color=(0.95, 0.95, 0.95, 1.0), height=420,
                                    camera_position=(90, 90, None),  # facing the camera (+z)
                                    elem_id="rec-model3d")
        gallery = gr.Gallery(label="Overlay / textured / shape / landmarks", columns=4, height="auto",
                             elem_id="rec-gallery")
        downloads = gr.File(label="Downloads: OBJ+MTL+textures (zip), GLB, codes.npz", file_count="multiple",
                            interactive=False, elem_id="rec-downloads")

        def handler(uploads, model, folder, progress=gr.Progress(track_tqdm=True)):
            try:
                folder, results, lines = reconstruct(service, sessions, max_mb, uploads, model, folder, progress)
            except PPError as e:
                return folder, None, [], [], f"error: {e}"
            except Exception as e:  # keep serving; one line in the page
                return folder, None, [], [], f"failed: {type(e).__name__}: {e}"
            glb, items, dl = outputs_for_page(results)
            return folder, glb, items, dl, "\n".join(lines)

        outs = [state, viewer, gallery, downloads, status]
        run.click(handler, [files, choice, state], outs)
        ex.click(lambda model, folder, progress=gr.Progress(track_tqdm=True): handler([example], model, folder,
                                                                                       progress),
                 [choice, state], outs)
