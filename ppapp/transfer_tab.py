"""Expression-transfer tab: the expression and jaw pose of one photo put on the face of another
(DECA's demo_transfer) -> an animation (GIF), the transferred mesh and renders."""
from __future__ import annotations

import os
import uuid
from typing import Optional

from ppengine.errors import InputError

from .common import MODEL_LOCK, Sessions, take_upload


def transfer(service, sessions: Sessions, max_mb: float, source, target, choice: str, folder: Optional[str],
             frames: int = 12, progress=None):
    """-> ``(folder, files)``; InputError with the CLI's one-line message for a bad photo."""
    folder = sessions.ensure(folder)
    if source is None or target is None:
        raise InputError("give two photos: the expression source and the target face")
    job = os.path.join(folder, "transfer_" + uuid.uuid4().hex[:8])
    with MODEL_LOCK:
        rec = service.reconstructor(choice)
        faces = []
        for role, up in (("source", source), ("target", target)):
            path = take_upload(up, os.path.join(job, role), max_mb)
            r, msg = service.detect(path, os.path.basename(path))
            if not r.ok:
                raise InputError(f"{role} photo: {msg}")
            faces.append(r)
        if progress is not None:
            progress(0.1, desc="source expression")
        src_codes = rec.codes(faces[0].faces[0])
        if progress is not None:
            progress(0.5, desc="target face")
        tgt = faces[1]
        tgt_codes = rec.codes(tgt.faces[0])
        if progress is not None:
            progress(0.9, desc="animation")
        out = service.transfer(rec, tgt.faces[0], tgt_codes, src_codes, tgt.original, os.path.join(job, "result"),
                               frames=frames)
    return folder, out


def build(gr, service, sessions: Sessions, max_mb: float, state):
    from ppengine.errors import PPError

    with gr.Tab("Expression transfer 表情迁移"):
        gr.Markdown("The expression (and jaw pose) of the **source** photo is put on the **target** face.")
        with gr.Row():
            src = gr.File(label="Source (expression)", elem_id="tr-source")
            tgt = gr.File(label="Target (face)", elem_id="tr-target")
            with gr.Column():
                choice = gr.Radio(service.choices(), value=service.choices()[0], label="Model")
                run = gr.Button("Transfer", variant="primary", elem_id="tr-run")
                status = gr.Textbox(label="Messages", lines=2, interactive=False, elem_id="tr-status")
        with gr.Row():
            anim = gr.Image(label="Transfer animation (GIF)", type="filepath", interactive=False, elem_id="tr-gif")
            viewer = gr.Model3D(label="Transferred mesh (GLB)", clear_color=(0.95, 0.95, 0.95, 1.0), height=360,
                                camera_position=(90, 90, None),
                                elem_id="tr-model3d")
        downloads = gr.File(label="Downloads: GIF, OBJ zip, GLB", file_count="multiple", interactive=False)

        def handler(s, t, model, folder, progress=gr.Progress(track_tqdm=True)):
            try:
                folder, out = transfer(service, sessions, max_mb, s, t, model, folder, progress=progress)
            except PPError as e:
                return folder, None, None, [], f"error: {e}"
            except Exception as e:  # keep serving; one line in the page
                return folder, None, None, [], f"failed: {type(e).__name__}: {e}"
            return folder, out["gif"], out["glb"], [out["gif"], out["obj_zip"], out["glb"]], "done"

        run.click(handler, [src, tgt, choice, state], [state, anim, viewer, downloads, status])
