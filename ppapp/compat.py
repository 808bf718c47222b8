"""One fix for gradio 5.14.0 (the newest gradio that resolves with the pinned set, see
docs/install.md) under the pydantic 2.1x installed beside it: pydantic now writes
``additionalProperties: true`` (a bool, valid JSON Schema) for a free ``dict`` field such as
gradio's ``FileData.meta``, and gradio_client 1.7.0's schema-to-type printer expects a dict, so
every page load of an app with a File / Image / Gallery / Model3D component answered HTTP 500
(``TypeError: argument of type 'bool' is not iterable`` in ``gradio_client.utils.get_type``).
Later gradio_client releases treat a bool schema as ``Any``; so does this wrapper."""
from __future__ import annotations


def patch_gradio_client() -> None:
    from gradio_client import utils

    if getattr(utils._json_schema_to_python_type, "_ppapp_patched", False):
        return
    original = utils._json_schema_to_python_type

    def _json_schema_to_python_type(schema, defs=None):
        if isinstance(schema, bool):
            return "Any"
        return original(schema, defs)

    _json_schema_to_python_type._ppapp_patched = True
    utils._json_schema_to_python_type = _json_schema_to_python_type
