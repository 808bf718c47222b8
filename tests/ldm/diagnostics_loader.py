"""Import a script of tools/diagnostics/ (scripts, not a package) by file path, for the tests."""
import importlib.util
import os

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools",
                     "diagnostics")


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"diagnostics_{name}", os.path.join(TOOLS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
