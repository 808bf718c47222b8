"""Export: one pipeline for every model. A zoo declares its components (:mod:`.spec`); the targets
write Paddle programs, ONNX files and Core ML packages and check each against the dygraph model."""
from .spec import (
                   Component,
                   ExportOptions,
                   TensorSpec,
                   components_of,
                   example_inputs,
                   group_norm_epsilons,
                   register_components,
                   select,
)

__all__ = ["Component", "ExportOptions", "TensorSpec", "components_of", "example_inputs", "group_norm_epsilons",
           "register_components", "select"]
