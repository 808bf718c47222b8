"""ppapp: the Gradio app (``python tools/app.py``). The one package that joins the two zoos on
purpose: ppface3d (Reconstruct, Expression transfer) and ppldm (Generate), over ppengine."""
