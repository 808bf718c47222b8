"""Applications: optimisation-based fitting, reconstruction/export, the face3d CLI and demo."""
