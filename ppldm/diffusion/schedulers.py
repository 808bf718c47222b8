"""Noise schedules and samplers, taken from ppdiffusers (not reimplemented here).

``make_scheduler("ddim", ...)`` builds a ppdiffusers scheduler from ppldm's names:

======================  ===============================================
ppldm name              ppdiffusers class
======================  ===============================================
``ddpm``                DDPMScheduler (ancestral, stochastic)
``ddim``                DDIMScheduler (``eta`` = 0 deterministic)
``pndm`` / ``plms``     PNDMScheduler (``plms`` skips the Runge-Kutta warm-up)
``dpm_solver++``        DPMSolverMultistepScheduler(algorithm_type="dpmsolver++")
``dpm_solver``          DPMSolverMultistepScheduler(algorithm_type="dpmsolver")
``euler``               EulerDiscreteScheduler
``euler_a``             EulerAncestralDiscreteScheduler
======================  ===============================================

Beta schedules: ``linear`` (betas linear in t), ``scaled_linear`` (sqrt(betas) linear in t,
the latent-diffusion / SD schedule) and ``cosine`` (Nichol & Dhariwal, ppdiffusers'
``squaredcos_cap_v2``). Prediction types: ``eps``, ``v``, ``x0`` (ppdiffusers' ``epsilon``,
``v_prediction``, ``sample``).
"""
from __future__ import annotations

import inspect

from ppengine.errors import ConfigError

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2",
                  "squaredcos_cap_v2": "squaredcos_cap_v2"}
PREDICTION_TYPES = {"eps": "epsilon", "epsilon": "epsilon", "v": "v_prediction",
                    "v_prediction": "v_prediction", "x0": "sample", "sample": "sample"}
SAMPLERS = ("ddpm", "ddim", "pndm", "plms", "dpm_solver++", "dpm_solver", "euler", "euler_a")


def _nearest(name, choices):
    from ppengine.registry import nearest

    near = nearest(name, choices)
    return f" Did you mean {near!r}?" if near else ""


def beta_schedule_name(name: str) -> str:
    """ppldm beta-schedule name -> ppdiffusers name (ConfigError naming the nearest if unknown)."""
    if name not in BETA_SCHEDULES:
        raise ConfigError(f"unknown beta_schedule {name!r}.{_nearest(name, BETA_SCHEDULES)} "
                          f"Valid: linear, scaled_linear, cosine")
    return BETA_SCHEDULES[name]


def prediction_type_name(name: str) -> str:
    """ppldm prediction type (eps | v | x0) -> ppdiffusers name (epsilon | v_prediction | sample)."""
    if name not in PREDICTION_TYPES:
        raise ConfigError(f"unknown prediction_type {name!r}.{_nearest(name, PREDICTION_TYPES)} "
                          f"Valid: eps, v, x0")
    return PREDICTION_TYPES[name]


def make_scheduler(name: str = "ddim", num_train_timesteps: int = 1000, beta_schedule: str = "scaled_linear",
                   beta_start: float = 0.00085, beta_end: float = 0.012, prediction_type: str = "eps",
                   **kwargs):
    """Build a ppdiffusers scheduler.

    Args:
        name: one of ``ddpm, ddim, pndm, plms, dpm_solver++, dpm_solver, euler, euler_a``.
        num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type: the diffusion
            the model was trained with (see :class:`ppldm.diffusion.GaussianDiffusion`).
        kwargs: passed to the scheduler class (e.g. ``steps_offset=1``, ``timestep_spacing``);
            SD's defaults (``clip_sample=False``, ``set_alpha_to_one=False``) are applied when the
            class takes them and they are not given.
    """
    import ppdiffusers as ppd

    key = name.lower().replace("-", "_")
    table = {
        "ddpm": (ppd.DDPMScheduler, {}),
        "ddim": (ppd.DDIMScheduler, {}),
        "pndm": (ppd.PNDMScheduler, {}),
        "plms": (ppd.PNDMScheduler, {"skip_prk_steps": True}),
        "dpm_solver++": (ppd.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
        "dpm_solver": (ppd.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver"}),
        "euler": (ppd.EulerDiscreteScheduler, {}),
        "euler_a": (ppd.EulerAncestralDiscreteScheduler, {}),
    }
    if key not in table:
        raise ConfigError(f"unknown sampler {name!r}.{_nearest(key, table)} Valid: {', '.join(SAMPLERS)}")
    cls, fixed = table[key]
    args = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule_name(beta_schedule),
                beta_start=beta_start, beta_end=beta_end,
                prediction_type=prediction_type_name(prediction_type))
    accepted = inspect.signature(cls.__init__).parameters
    for k, v in (("clip_sample", False), ("set_alpha_to_one", False)):
        if k in accepted:
            args[k] = v
    args.update(fixed)
    for k, v in kwargs.items():
        if k not in accepted:
            raise ConfigError(f"sampler {name!r} ({cls.__name__}) takes no argument {k!r}."
                              f"{_nearest(k, [p for p in accepted if p != 'self'])}")
        args[k] = v
    return cls(**args)
