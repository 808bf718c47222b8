"""The iteration-based trainer shared by every model in the library.

A model supplies ``forward(batch) -> dict`` and ``losses(batch, outputs) -> dict`` (with
``loss``), or ``train_step(batch, optimizers, step)`` when its optimizers need different losses
(a GAN). Without a ``train_step``, several named optimizers (``optimizer: {enc: {..., params:
enc}, dec: {..., params: dec}}``) all step after the one backward of ``loss``, each on its own
parameter group; groups that share a parameter are a ConfigError at build time. A model
with ``set_train_step(step)`` is told the (1-based) iteration before each one, e.g. to switch
loss terms on in stages (resumed runs continue at the restored iteration).
Everything else (optimizers, LR schedules, clipping, accumulation, AMP, EMA, evaluation,
best-checkpoint tracking, NaN guard, checkpoints, logging, data parallel) lives here, with
no model-specific branches. Callbacks are a plain list of objects with optional hooks.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from typing import Dict, Optional

import numpy as np
import paddle

from . import distributed as dist
from .checkpoint import (
    CheckpointManager,
    load_weights,
    optimizer_state,
    resolve_resume,
    restore_optimizer,
    save_tensors,
)
from .config import Config, check_keys
from .data import DataStream, eval_loader
from .errors import ConfigError, TrainingDiverged
from .io import atomic_write_json
from .logging import RunLogger, progress
from .registry import CALLBACKS, DATASETS, LR_SCHEDULERS, METRICS, MODELS, OPTIMIZERS, check_kwargs

TRAIN_DEFAULTS = dict(
    max_iters=1000, log_interval=10, eval_interval=0, save_interval=0, keep_last=3, grad_clip=None,
    accum_steps=1, amp="auto", ema_decay=None, seed=42, metric="val/loss", metric_mode="min",
    output="output/run", progress=True, log_images=True, eval_batches=None,
)
DATA_KEYS = ("batch_size", "eval_batch_size", "num_workers", "shuffle", "drop_last", "fixed_shards", "train", "val",
             "test")


def _cfg(cfg) -> Config:
    return cfg if isinstance(cfg, Config) else Config(cfg or {})


# weights files in an original project's format (torch.save): models that read them implement load_checkpoint(path)
ORIGINAL_CHECKPOINT_EXTS = (".tar", ".pth", ".pt", ".ckpt", ".bin")


def build_model(cfg, load: bool = True):
    """Build ``cfg['model']`` from the registry and load ``model.weights`` when given."""
    cfg = _cfg(cfg)
    mcfg = dict(cfg.get("model") or {})
    weights = mcfg.pop("weights", None)
    check = getattr(MODELS.get(mcfg["type"], "model.type", cfg), "check_config", None) if "type" in mcfg else None
    if check is not None:  # a model's build-time agreement with its loss and data (e.g. DECA.check_config)
        check(cfg)
    model = MODELS.build(mcfg, "model", cfg)
    if load and weights:
        if os.path.splitext(str(weights))[1].lower() in ORIGINAL_CHECKPOINT_EXTS and hasattr(model, "load_checkpoint"):
            model.load_checkpoint(weights)  # a released checkpoint in its original format (e.g. DECA's .tar)
        else:
            load_weights(model, weights)
    return model


def build_dataset(cfg, split: str):
    cfg = _cfg(cfg)
    dcfg = (cfg.get("data") or {}).get(split)
    if dcfg is None:
        return None
    return DATASETS.build(dcfg, f"data.{split}", cfg)


def build_metrics(cfg) -> list:
    cfg = _cfg(cfg)
    return [METRICS.build(m, f"metrics.{i}", cfg) for i, m in enumerate(cfg.get("metrics") or [])]


def _scalar(v) -> float:
    if isinstance(v, paddle.Tensor):
        return float(v.detach().astype("float32").numpy().reshape(-1)[0]) if v.size == 1 else float(v.mean())
    return float(v)


class EMA:
    """Exponential moving average of a model's trainable parameters.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run
    does not keep the random initial weights. Buffers (running statistics, fitted scale factors)
    are not averaged: the model's live buffers are used with the averaged parameters.
    """

    def __init__(self, model: paddle.nn.Layer, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters() if not p.stop_gradient}

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @paddle.no_grad()
    def update(self, model):
        d = self.current_decay()
        self.updates += 1
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].set_value(self.shadow[k] * d + p.detach() * (1.0 - d))

    @contextlib.contextmanager
    def applied(self, model):
        """Swap EMA weights into ``model`` for the duration of the block."""
        sd = model.state_dict()
        backup = {k: sd[k].detach().clone() for k in self.shadow}
        for k, v in self.shadow.items():
            sd[k].set_value(v)
        try:
            yield
        finally:
            for k, v in backup.items():
                sd[k].set_value(v)


class Trainer:
    """Train / evaluate a registered model from a resolved config.

    >>> cfg = load_config("configs/toy.yml", ["train.max_iters=20"])
    >>> Trainer(cfg).train()
    """

    def __init__(self, cfg, output: Optional[str] = None, callbacks: Optional[list] = None):
        self.cfg = _cfg(cfg)
        tcfg = dict(self.cfg.get("train") or {})
        check_keys(tcfg, TRAIN_DEFAULTS, "train", self.cfg)
        check_keys(self.cfg.get("data") or {}, DATA_KEYS, "data", self.cfg)
        self.tc = {**TRAIN_DEFAULTS, **tcfg}
        if output:
            self.tc["output"] = output
            self.cfg["train"] = {**(self.cfg.get("train") or {}), "output": output}
        self.output = self.tc["output"]
        self.world_size, self.rank = dist.init()
        self.is_main = self.rank == 0
        self.seed = int(self.tc["seed"])
        self._seed_all(self.seed)
        self.model = build_model(self.cfg)
        self.callbacks = [CALLBACKS.build(c, f"callbacks.{i}", self.cfg)
                          for i, c in enumerate(self.cfg.get("callbacks") or [])] + list(callbacks or [])
        self.metrics = build_metrics(self.cfg)
        self.step = 0
        self.best = None
        self.logger = None
        self.ema = None
        self._data = None

    # ------------------------------------------------------------------ building
    @staticmethod
    def _seed_all(seed: int):
        paddle.seed(seed)
        np.random.seed(seed % (2 ** 32))
        random.seed(seed)

    def _step_seed(self, step: int):
        # RNG state is a pure function of (seed, step, rank): resuming at step k reproduces it.
        self._seed_all((self.seed * 1000003 + step * 7919 + self.rank) % (2 ** 31))

    def _build_optimizers(self):
        ocfg = self.cfg.get("optimizer") or {"type": "Adam", "lr": 1e-3}
        named = {"default": ocfg} if "type" in ocfg else dict(ocfg)
        lcfg = self.cfg.get("lr_scheduler") or {"type": "Constant"}
        clip = self.tc["grad_clip"]
        groups = self.model.param_groups() if hasattr(self.model, "param_groups") else None
        self.optimizers, self.schedulers = {}, {}
        owned = {}
        for name, oc in named.items():
            path = "optimizer" if name == "default" else f"optimizer.{name}"
            if not isinstance(oc, dict) or "type" not in oc:
                raise ConfigError(f"{self.cfg.source_of(path)}: {path}: expected an optimizer mapping with 'type:' "
                                  f"(e.g. {{type: Adam, lr: 1e-4}}) or a mapping of named optimizers")
            oc = dict(oc)
            pname = oc.pop("params", None)
            if pname is None:
                params = [p for p in self.model.parameters() if not p.stop_gradient]
            else:
                if groups is None or pname not in groups:
                    from .registry import nearest

                    near = nearest(pname, groups or {})
                    raise ConfigError(f"{self.cfg.source_of(path + '.params')}: {path}.params: model has no parameter "
                                      f"group {pname!r}{'; did you mean ' + repr(near) + '?' if near else ''} "
                                      f"(groups: {', '.join(groups or {}) or 'none: implement param_groups()'})")
                params = list(groups[pname])
            lr = float(oc.get("lr", 1e-3))
            sched_cfg = dict(lcfg)
            stype = sched_cfg.pop("type")
            sched_fn = LR_SCHEDULERS.get(stype, "lr_scheduler.type", self.cfg)
            check_kwargs(sched_fn, {**sched_cfg, "base_lr": lr, "max_iters": 1}, "lr_scheduler", self.cfg,
                         what=f"lr_scheduler {stype!r}")
            sched = sched_fn(base_lr=lr, max_iters=int(self.tc["max_iters"]), **sched_cfg)
            grad_clip = paddle.nn.ClipGradByGlobalNorm(float(clip)) if clip else None
            self.optimizers[name] = OPTIMIZERS.build(oc, path, self.cfg, parameters=params, learning_rate=sched,
                                                     grad_clip=grad_clip)
            self.schedulers[name] = sched
            owned[name] = {id(p) for p in params}
        if len(owned) > 1 and not hasattr(self.model, "train_step"):
            names = list(owned)
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    if owned[a] & owned[b]:
                        raise ConfigError(
                            f"{self.cfg.source_of('optimizer')}: optimizer.{a} and optimizer.{b} share parameters: "
                            f"without a train_step the trainer steps every optimizer after one backward, so each "
                            f"needs its own 'params:' group (groups: {', '.join(groups or {}) or 'none'}); or give "
                            f"{type(self.model).__name__} a train_step(batch, optimizers, step)")

    def _amp_enabled(self) -> bool:
        amp = self.tc["amp"]
        on_gpu = paddle.is_compiled_with_cuda() and "gpu" in paddle.get_device()
        if amp == "auto":
            return on_gpu
        if amp and not on_gpu:
            self.logger.info("train.amp=true but no GPU is in use: training in float32")
            return False
        return bool(amp)

    def _callbacks(self, hook: str, *args):
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    # ------------------------------------------------------------------ checkpoints
    def _state_files(self):
        files = {"model": dict(self.model.state_dict())}
        opt_tensors, opt_meta = {}, {}
        for name, opt in self.optimizers.items():
            t, m = optimizer_state(opt, self.model, name)
            opt_tensors.update(t)
            opt_meta[name] = m
        files["optimizer"] = opt_tensors
        if self.ema is not None:
            files["ema"] = self.ema.shadow
        return files, opt_meta

    def save_checkpoint(self) -> Optional[str]:
        if not self.is_main:
            return None
        for k, v in self.model.state_dict().items():
            if v.dtype in (paddle.float32, paddle.float64, paddle.float16) and not bool(paddle.isfinite(v).all()):
                raise TrainingDiverged(f"parameter {k} is not finite at step {self.step}; no checkpoint written. "
                                       f"Last good checkpoint: {self.ckpts.latest() or 'none'}. "
                                       f"Lower optimizer.lr or set train.grad_clip.")
        files, opt_meta = self._state_files()
        state = {
            "step": self.step, "data": self._data.state() if self._data else None,
            "optimizers": opt_meta,
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {"scheme": "reseeded every step from (seed, step, rank)", "seed": self.seed},
            "best": self.best, "world_size": self.world_size,
            "ema_updates": self.ema.updates if self.ema is not None else None,
        }
        path = self.ckpts.save(self.step, files, state)
        self.logger.info(f"saved checkpoint {path}")
        self._callbacks("on_checkpoint", self.step, path)
        return path

    def load_checkpoint(self, path: str):
        path = resolve_resume(path)
        state, files = CheckpointManager.load(path)
        load_weights(self.model, files["model"])
        for name, opt in self.optimizers.items():
            restore_optimizer(opt, self.model, name, files.get("optimizer", {}), state["optimizers"].get(name, {}))
        for name, s in self.schedulers.items():
            s.set_state_dict(state["schedulers"][name])
            s.last_lr = s.get_lr()
        if self.ema is not None and "ema" in files:
            for k, v in files["ema"].items():
                self.ema.shadow[k].set_value(paddle.to_tensor(v))
            self.ema.updates = int(state.get("ema_updates") or self.step)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("data") and self._data is not None:
            self._data.load_state(state["data"])
        self.step = int(state["step"])
        self.best = state.get("best")
        self.logger.info(f"resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------ training
    def _forward_losses(self, net, batch) -> Dict[str, paddle.Tensor]:
        with paddle.amp.auto_cast(enable=self.amp, dtype="float16"):
            outputs = net(batch)
            losses = self.model.losses(batch, outputs)
        if "loss" not in losses:
            raise ConfigError(f"{type(self.model).__name__}.losses() must return a dict with a 'loss' entry "
                              f"(got {', '.join(losses)})")
        return losses

    def _check_finite(self, logs: dict):
        for k, v in logs.items():
            if not math.isfinite(v):
                latest = self.ckpts.latest() if self.is_main else None
                raise TrainingDiverged(
                    f"{k} became {v} at step {self.step + 1}; training stopped. Last good checkpoint: "
                    f"{latest or 'none written yet'} (resume with --resume {self.output}). "
                    f"Lower optimizer.lr, set train.grad_clip, or check the data.")

    def _train_one(self, net) -> dict:
        accum = max(1, int(self.tc["accum_steps"]))
        if hasattr(self.model, "set_train_step"):
            self.model.set_train_step(self.step + 1)
        if hasattr(self.model, "train_step"):
            batch = next(self._data)
            raw = self.model.train_step(batch, self.optimizers, self.step + 1)
            logs = {k: _scalar(v) for k, v in raw.items()}
            self._check_finite(logs)
        else:
            sums: Dict[str, float] = {}
            for _ in range(accum):
                batch = next(self._data)
                losses = self._forward_losses(net, batch)
                vals = {k: _scalar(v) for k, v in losses.items()}
                self._check_finite(vals)
                loss = losses["loss"] / accum
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
                for k, v in vals.items():
                    sums[k] = sums.get(k, 0.0) + v / accum
            # one backward, then every optimizer steps its own (disjoint, checked at build) parameters
            for opt in self.optimizers.values():
                if self.scaler is not None:
                    self.scaler.step(opt)
                else:
                    opt.step()
            if self.scaler is not None:
                self.scaler.update()
            for opt in self.optimizers.values():
                opt.clear_grad()
            logs = sums
        for s in self.schedulers.values():
            s.step()
        return logs

    def train(self, resume: Optional[str] = None) -> dict:
        """Run to ``train.max_iters``; ``resume`` is a checkpoint folder or a run folder."""
        tc = self.tc
        os.makedirs(self.output, exist_ok=True)
        self.logger = RunLogger(self.output, enabled=self.is_main)
        if self.is_main:  # the resolved config, beside the weights: what load_for_inference rebuilds from
            self.cfg.save(os.path.join(self.output, "config.yml"))
        self.ckpts = CheckpointManager(self.output, tc["keep_last"])
        train_set = build_dataset(self.cfg, "train")
        if train_set is None:
            raise ConfigError(f"{self.cfg.path}: data.train is missing: training needs a dataset "
                              f"(e.g. data: {{train: {{type: ..., ...}}}})")
        dc = self.cfg.get("data") or {}
        self._data = DataStream(train_set, int(dc.get("batch_size", 8)), shuffle=dc.get("shuffle", True),
                                drop_last=dc.get("drop_last", True), num_workers=int(dc.get("num_workers", 0)),
                                seed=self.seed, world_size=self.world_size, rank=self.rank,
                                fixed_shards=bool(dc.get("fixed_shards", False)))
        self.val_set = build_dataset(self.cfg, "val")
        self._build_optimizers()
        self.amp = self._amp_enabled()
        self.scaler = paddle.amp.GradScaler(init_loss_scaling=2.0 ** 15) if self.amp else None
        if tc["ema_decay"]:
            self.ema = EMA(self.model, tc["ema_decay"])
        if resume:
            self.load_checkpoint(resume)
        net = dist.wrap(self.model, self.world_size)
        self.model.train()
        max_iters = int(tc["max_iters"])
        bar = progress(max_iters, self.step, enabled=self.is_main and tc["progress"])
        self.logger.info(f"training {type(self.model).__name__} for {max_iters} iterations "
                         f"(world size {self.world_size}, amp {self.amp}) -> {self.output}")
        self._callbacks("on_train_begin")
        logs: dict = {}
        t0 = time.time()
        try:
            while self.step < max_iters:
                self._step_seed(self.step + 1)
                logs = self._train_one(net)
                self.step += 1
                if self.ema is not None:
                    self.ema.update(self.model)
                lr = next(iter(self.schedulers.values())).last_lr
                bar.update(1)
                bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4g}", lr=f"{lr:.3g}")
                if self.step % max(1, int(tc["log_interval"])) == 0 or self.step == max_iters:
                    self.logger.scalars({**logs, "lr": lr}, self.step, "train/")
                    self.logger.info(f"step {self.step}/{max_iters} " +
                                     " ".join(f"{k}={v:.5g}" for k, v in logs.items()) + f" lr={lr:.4g}")
                self._callbacks("on_step_end", self.step, logs)
                ev, sv = int(tc["eval_interval"] or 0), int(tc["save_interval"] or 0)
                if self.val_set is not None and ev and (self.step % ev == 0 or self.step == max_iters):
                    self._eval_and_track()
                if sv and self.step % sv == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        if self.is_main:
            if not (tc["save_interval"] and self.step % int(tc["save_interval"]) == 0):
                self.save_checkpoint()
            with self._eval_weights():
                save_tensors(os.path.join(self.output, "final.safetensors"), dict(self.model.state_dict()))
        self._callbacks("on_train_end")
        self.logger.info(f"done: {self.step} iterations in {time.time() - t0:.1f} s")
        self.logger.close()
        return logs

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def _eval_weights(self):
        with (self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext()):
            yield

    def _eval_and_track(self):
        with self._eval_weights():
            metrics = self.evaluate(self.val_set, log_images=self.tc["log_images"])
            self.model.train()
            key = self.tc["metric"]
            name = key[4:] if key.startswith("val/") else key
            if self.is_main and name in metrics:
                v = metrics[name]
                better = self.best is None or (v < self.best["value"] if self.tc["metric_mode"] == "min"
                                               else v > self.best["value"])
                if better:
                    self.best = {"step": self.step, "metric": key, "value": v}
                    save_tensors(os.path.join(self.output, "best.safetensors"), dict(self.model.state_dict()))
                    atomic_write_json(os.path.join(self.output, "best.json"), self.best)
        self._callbacks("on_eval_end", self.step, metrics)
        return metrics

    @paddle.no_grad()
    def evaluate(self, dataset=None, log_images: bool = False, desc: str = "eval") -> dict:
        """Average losses (for models without ``eval_step``) and every configured metric."""
        if dataset is None:
            dataset = build_dataset(self.cfg, "test") or build_dataset(self.cfg, "val")
            if dataset is None:
                raise ConfigError(f"{self.cfg.path}: evaluation needs data.test or data.val")
        if self.logger is None:
            self.logger = RunLogger(self.output, enabled=False)
        dc = self.cfg.get("data") or {}
        loader = eval_loader(dataset, int(dc.get("eval_batch_size", dc.get("batch_size", 8))),
                             int(dc.get("num_workers", 0)))
        self.model.eval()
        for m in self.metrics:
            m.reset()
        sums: Dict[str, float] = {}
        n = 0
        limit = self.tc.get("eval_batches")
        first = None
        total = min(len(loader), int(limit)) if limit else len(loader)
        bar = progress(total, 0, enabled=self.is_main and bool(self.tc["progress"]), desc=desc, leave=False)
        for i, batch in enumerate(loader):
            if i >= total:
                break
            bar.update(1)
            if hasattr(self.model, "eval_step"):
                outputs = self.model.eval_step(batch)
            else:
                outputs = self.model(batch)
                for k, v in self.model.losses(batch, outputs).items():
                    sums[k] = sums.get(k, 0.0) + _scalar(v)
                n += 1
            for m in self.metrics:
                m.update(batch, outputs)
            if first is None:
                first = (batch, outputs)
        bar.close()
        results = {k: v / max(1, n) for k, v in sums.items()}
        for m in self.metrics:
            results.update({k: float(v) for k, v in m.compute().items()})
        if self.is_main and self.logger.enabled:
            self.logger.scalars(results, self.step, "val/")
            self.logger.info(f"eval @ {self.step}: " + " ".join(f"{k}={v:.5g}" for k, v in results.items()))
            if log_images and first is not None and hasattr(self.model, "visuals"):
                for tag, img in self.model.visuals(*first).items():
                    self.logger.image(f"val/{tag}", img, self.step)
        return results
