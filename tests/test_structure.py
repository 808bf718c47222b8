"""The layering rules of DESIGN.md, checked on the source: one place builds FLAME + renderer,
data never imports models or apps, no diagnostics inside the library, models never import
pipelines, the engine imports no zoo."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(*parts):
    base = os.path.join(ROOT, *parts)
    for d, _, names in os.walk(base):
        for n in names:
            if n.endswith(".py"):
                yield os.path.join(d, n)


def _imports(path):
    """Absolute module names a file imports (relative imports resolved against its package)."""
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    pkg = rel[:-1] if rel[-1] != "__init__" else rel[:-1]
    out = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append(mod)
            out += [f"{mod}.{a.name}" for a in node.names]
    return out


def test_only_the_face_model_builds_flame_with_a_renderer():
    offenders = []
    for f in list(_files("ppface3d")) + list(_files("tools")):
        src = open(f).read()
        if re.search(r"\bFLAME\(", src) and re.search(r"\bRenderer\(", src):
            offenders.append(os.path.relpath(f, ROOT))
    assert offenders == [os.path.join("ppface3d", "face_model.py")], offenders


def test_face_data_imports_no_models_or_apps():
    bad = [(os.path.relpath(f, ROOT), m) for f in _files("ppface3d", "data") for m in _imports(f)
           if m.startswith(("ppface3d.models", "ppface3d.apps"))]
    assert not bad, bad


def test_ldm_models_import_no_pipelines_and_engine_imports_no_zoo():
    bad = [(os.path.relpath(f, ROOT), m) for f in _files("ppldm", "models") for m in _imports(f)
           if m.startswith("ppldm.pipelines")]
    bad += [(os.path.relpath(f, ROOT), m) for f in _files("ppengine") for m in _imports(f)
            if m.startswith(("ppface3d", "ppldm"))]
    assert not bad, bad


def test_no_diagnostics_inside_the_library():
    found = [os.path.relpath(f, ROOT) for pkg in ("ppface3d", "ppldm", "ppengine") for f in _files(pkg)
             if re.search(r"(_diagnose|probe)\w*\.py$", os.path.basename(f))]
    assert not found, found
