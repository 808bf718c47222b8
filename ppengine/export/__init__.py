"""Export: one pipeline for every model. A zoo declares its components (:mod:`.spec`); the targets
write Paddle programs, ONNX files and Core ML packages and check each against the dygraph model
(:mod:`.pipeline`); :mod:`.runtime` runs an exported folder on onnxruntime or Paddle Inference."""
from .pipeline import export
from .spec import (
                   Component,
                   ExportOptions,
                   TensorSpec,
                   components_of,
                   example_inputs,
                   group_norm_epsilons,
                   pipeline_info,
                   register_components,
                   register_pipeline_info,
                   select,
)

__all__ = ["Component", "ExportOptions", "TensorSpec", "components_of", "example_inputs", "export",
           "group_norm_epsilons", "pipeline_info", "register_components", "register_pipeline_info", "select"]
