"""Build-time agreement of a face model's config with its loss and data (as PaddleSeg's
``_check_sync_*``): a setting the parts disagree on is an error naming both keys, never a
term that silently becomes zero or a part of a code that is silently dropped."""
from __future__ import annotations

from ppengine.errors import ConfigError

# FaceModel settings that the synthetic data must share with the model (same head, same albedo)
_SAME_FACE = ("flame_model_path", "flame_landmark_path", "albedo_path")
_SYNTHETIC = "SyntheticFaces"
_DATA_DEFAULTS = {"n_shape": 100, "n_exp": 50, "n_tex": 50, "K": 1, "geometry": False}


def defaults_of(cls) -> dict:
    """The keyword defaults of a class's constructor."""
    import inspect

    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _src(cfg, key: str) -> str:
    s = cfg.source_of(key) if hasattr(cfg, "source_of") else None
    return f" ({s})" if s else ""


def _mismatch(cfg, key_a: str, a, key_b: str, b, why: str) -> ConfigError:
    return ConfigError(f"{key_a}={a!r}{_src(cfg, key_a)} and {key_b}={b!r}{_src(cfg, key_b)} disagree: {why}")


def check_face_config(cfg, model_defaults: dict, loss_defaults: dict) -> None:
    """Check ``cfg['model']`` (a DECA-family model) against its loss and ``cfg['data']``.

    ``model_defaults`` / ``loss_defaults``: the model's and loss's constructor defaults, for keys
    the config leaves out. Checks: image sizes; FLAME / albedo files of synthetic data; code sizes
    of supervised terms; loss terms whose inputs the training data cannot give (geometry maps,
    ground-truth codes); shape consistency needs K > 1 images per subject.
    """
    model = dict(model_defaults, **{k: v for k, v in (cfg.get("model") or {}).items() if v is not None})
    loss = dict(loss_defaults, **((cfg.get("model") or {}).get("loss") or {}))
    data = cfg.get("data") or {}
    for split in ("train", "val", "test"):
        d = data.get(split)
        if not isinstance(d, dict) or "image_size" not in d and d.get("type") != _SYNTHETIC:
            continue
        size = d.get("image_size", 224)
        if int(size) != int(model["image_size"]):
            raise _mismatch(cfg, f"data.{split}.image_size", size, "model.image_size", model["image_size"],
                            "the encoder reads and the renderer draws images of the model's size; reference one "
                            "from the other (image_size: ${model.image_size})")
        if d.get("type") != _SYNTHETIC:
            continue
        for k in _SAME_FACE:
            if d.get(k) != model.get(k):
                raise _mismatch(cfg, f"data.{split}.{k}", d.get(k), f"model.{k}", model.get(k),
                                "the synthetic faces must be made with the model's own head and albedo")
    train = data.get("train") if isinstance(data.get("train"), dict) else None
    if train is None:
        return
    synthetic = train.get("type") == _SYNTHETIC
    t = dict(_DATA_DEFAULTS, **train) if synthetic else dict(train)
    supervised = {k: float(loss.get(k) or 0) for k in ("param", "shape_param", "shape_metric", "shape_vertex")}
    if synthetic and any(v > 0 for v in supervised.values()):
        varying = t.get("shape_components") or t["n_shape"]
        key = "data.train.shape_components" if t.get("shape_components") else "data.train.n_shape"
        if int(varying) > int(model["n_shape"]):
            raise _mismatch(cfg, key, varying, "model.n_shape", model["n_shape"],
                            "the data varies more shape coefficients than the model predicts, and the supervised "
                            "loss would silently compare only the common ones")
        if int(t["n_shape"]) < int(model["n_shape"]):
            raise _mismatch(cfg, "data.train.n_shape", t["n_shape"], "model.n_shape", model["n_shape"],
                            "the model predicts shape coefficients the data has no ground truth for")
        if supervised["param"] > 0 and int(t["n_exp"]) != int(model["n_exp"]):
            raise _mismatch(cfg, "data.train.n_exp", t["n_exp"], "model.n_exp", model["n_exp"],
                            "model.loss.param supervises the expression code, which must have one size")
    if not synthetic:
        for k, v in supervised.items():
            if v > 0:
                raise _mismatch(cfg, f"model.loss.{k}", v, "data.train.type", train.get("type"),
                                "this supervised term needs ground truth that only SyntheticFaces gives; set "
                                f"model.loss.{k}=0 for photos")
    geometry = float(loss.get("geometry") or 0)
    if geometry > 0 and not t.get("geometry", False):
        raise _mismatch(cfg, "model.loss.geometry", geometry, "data.train.geometry", t.get("geometry", False),
                        "the geometry term needs the data's per-cell normal/depth maps: set "
                        "data.train.geometry=true (SyntheticFaces) or model.loss.geometry=0")
    if loss.get("shape_consistency", True) and int(t.get("K", 1)) < 2:
        raise _mismatch(cfg, "model.loss.shape_consistency", True, "data.train.K", t.get("K", 1),
                        "shape consistency swaps shape codes among a subject's K images and needs K >= 2; set "
                        "data.train.K >= 2 or model.loss.shape_consistency=false")


def check_detail_config(cfg) -> None:
    """Check a ``DECADetail`` config: the coarse model (``model.coarse`` or the config.yml of
    ``model.coarse_weights``) against the data (image size, the synthetic head), detail
    consistency against K, the detail metric against its ground truth, and the wrinkles of the
    synthetic splits against each other. The resolved coarse config is written back into
    ``cfg['model']['coarse']`` so that the run's saved config.yml describes the whole model."""
    from .deca_detail import coarse_config

    model = cfg.get("model") or {}
    coarse, _ = coarse_config(model.get("coarse"), model.get("coarse_weights"))
    if "coarse" not in model or not model.get("coarse"):
        cfg["model"]["coarse"] = coarse
    from ppengine.registry import MODELS

    cdef = defaults_of(MODELS.get(coarse.get("type", "DECA"), "model.coarse.type", cfg))
    size = coarse.get("image_size", cdef.get("image_size"))
    loss = dict(model.get("loss") or {})
    data = cfg.get("data") or {}
    splits = {k: d for k, d in ((k, data.get(k)) for k in ("train", "val", "test")) if isinstance(d, dict)}
    for split, d in splits.items():
        if "image_size" in d or d.get("type") == _SYNTHETIC:
            if int(d.get("image_size", 224)) != int(size):
                raise _mismatch(cfg, f"data.{split}.image_size", d.get("image_size", 224), "model.coarse.image_size",
                                size, "the detail model reads images of the coarse model's size")
        if d.get("type") == _SYNTHETIC:
            for k in _SAME_FACE:
                if d.get(k) != coarse.get(k):
                    raise _mismatch(cfg, f"data.{split}.{k}", d.get(k), f"model.coarse.{k}", coarse.get(k),
                                    "the synthetic faces must be made with the coarse model's head and albedo")
    synth = {k: d for k, d in splits.items() if d.get("type") == _SYNTHETIC}
    with_wr = {k: d.get("wrinkles") for k, d in synth.items() if d.get("wrinkles") is not None}
    if len(set(map(repr, with_wr.values()))) > 1:
        (a, wa), (b, wb) = list(with_wr.items())[:2]
        raise _mismatch(cfg, f"data.{a}.wrinkles", wa, f"data.{b}.wrinkles", wb,
                        "training and evaluation faces must carry the same kind of detail")
    train = splits.get("train")
    if train is not None and loss.get("detail_consistency", True) and int(train.get("K", 1)) < 2:
        raise _mismatch(cfg, "model.loss.detail_consistency", True, "data.train.K", train.get("K", 1),
                        "detail consistency swaps detail codes among a subject's K images and needs K >= 2; set "
                        "data.train.K >= 2 or model.loss.detail_consistency=false")
    disp = float(loss.get("disp") or 0)
    if train is not None and disp > 0 and not (train.get("type") == _SYNTHETIC and train.get("wrinkles") is not None):
        raise _mismatch(cfg, "model.loss.disp", disp, "data.train.wrinkles", train.get("wrinkles"),
                        "the supervised displacement term needs SyntheticFaces with wrinkles; set model.loss.disp=0 "
                        "for photos")
    names = [m.get("type") for m in (cfg.get("metrics") or []) if isinstance(m, dict)]
    if "DetailNormalMetric" in names:
        for split in ("val", "test"):
            d = splits.get(split)
            if d is not None and not (d.get("type") == _SYNTHETIC and d.get("wrinkles") is not None
                                      and d.get("detail_gt")):
                raise _mismatch(cfg, "metrics", "DetailNormalMetric", f"data.{split}.detail_gt", d.get("detail_gt"),
                                "the detail metric needs SyntheticFaces with wrinkles and detail_gt: true")
