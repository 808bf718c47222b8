"""FLAME head model in Paddle ops, safe loading of FLAME files, and a generated FLAME-format default.

    from ppface3d.flame import FLAME, default_model_path
    flame = FLAME()                       # generated default model (built once into the cache)
    flame = FLAME.from_files("generic_model.pkl", "landmark_embedding.npy")
    out = flame(shape=betas, expression=psi, jaw_pose=jaw)   # out.vertices (B, V, 3)

See docs/flame.md.
"""
from .flame import FLAME, FLAMEOutput
from .generate import GENERATOR_VERSION, build_generated_model, cache_dir, default_model_path, write_generated_model
from .io import LandmarkEmbedding, load_flame_model, load_landmark_embedding
from .safe_pickle import UnsafePickleError, load_npy, load_pickle

__all__ = [
    "FLAME", "FLAMEOutput", "default_model_path", "cache_dir", "build_generated_model", "write_generated_model",
    "GENERATOR_VERSION", "load_flame_model", "load_landmark_embedding", "LandmarkEmbedding",
    "load_pickle", "load_npy", "UnsafePickleError",
]
