"""Quiet command lines: an entry point prints only the project's own lines (issue 22, part 4)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Every line tools/infer.py face3d may print: its tqdm bars and its one-line results.
ALLOWED = [re.compile(p) for p in (
    r"^$",
    r"^\s+$",                                            # tqdm clearing its line
    r"^fit:\s+\d+%\|.*\| \d+/\d+ \[.*\]$",               # the fitter's progress bar
    r"^\S+: face \d+ -> \S+$",
    r"^\d+ face\(s\) reconstructed, \d+ input\(s\) without a usable face -> \S+$",
)]


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    import imageio.v3 as iio
    from skimage.data import astronaut

    p = tmp_path_factory.mktemp("quiet") / "astronaut.png"
    iio.imwrite(p, astronaut())
    return str(p)


def _run(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=ROOT)  # 2: paddle's OMP notice would show
    env.pop("PPENGINE_VERBOSE", None)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "infer.py")] + args, cwd=tmp_path, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    lines = re.split(r"[\r\n]", r.stdout)
    return r.returncode, lines


def test_infer_face3d_prints_only_its_own_lines(astronaut, tmp_path):
    code, lines = _run(["face3d", "--image", astronaut, "--fit-iters", "6", "3", "--fit-size", "32",
                        "-O", str(tmp_path / "out")], tmp_path)
    assert code == 0, "\n".join(lines)
    foreign = [ln for ln in lines if not any(p.match(ln) for p in ALLOWED)]
    assert not foreign, "third-party chatter on the command line:\n" + "\n".join(foreign)
    assert any("1 face(s) reconstructed" in ln for ln in lines)
    assert any(ln.startswith("fit:") for ln in lines)  # our progress bar stays
    assert (tmp_path / "out" / "astronaut" / "mesh.glb").stat().st_size > 0


def test_verbose_shows_the_chatter(astronaut, tmp_path):
    code, lines = _run(["face3d", "--image", astronaut, "--fit-iters", "1", "1", "--fit-size", "32",
                        "--no-progress", "--verbose", "-O", str(tmp_path / "out")], tmp_path)
    assert code == 0, "\n".join(lines)
    text = "\n".join(lines)
    assert "OMP_NUM_THREADS set to 2" in text          # paddle's import-time notice
    assert "TensorFlow Lite" in text or "inference_feedback_manager" in text  # mediapipe's C++ logging


def test_native_filter_keeps_real_errors(capfd):
    """Only known chatter is dropped: other native stderr lines written inside the block come back."""
    from ppengine import quiet

    with quiet.native_stderr_filtered():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"W0000 00:00:1796192350.531167   23600 inference_feedback_manager.cc:114] Feedback\n")
        os.write(2, b"E0000 00:00:1796192350.531167   23600 graph.cc:1] a real error\n")
        os.write(2, b"something else\n")
    err = capfd.readouterr().err
    assert "a real error" in err and "something else" in err
    assert "XNNPACK" not in err and "Feedback" not in err


def test_quiet_keeps_own_deprecations_and_drops_dependencies():
    code = (
        "import warnings, sys\n"
        "from ppengine.quiet import quiet\n"
        "quiet(verbose=False)\n"
        "warnings.warn_explicit('dep', DeprecationWarning, 'x.py', 1, module='somelib.mod')\n"
        "warnings.warn_explicit('own', DeprecationWarning, 'x.py', 1, module='ppldm.models')\n"
        "warnings.warn('No ccache found. Please be aware', UserWarning)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PPENGINE_VERBOSE", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "own" in r.stderr and "dep" not in r.stderr and "ccache" not in r.stderr


def test_every_entry_point_calls_quiet_before_its_heavy_imports():
    """tools/*.py and the notebooks' first cells: quiet() comes before any other project or paddle import."""
    import ast
    import glob
    import json

    def check(src, where):
        calls = [n.lineno for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", None) == "quiet"]
        heavy = [n.lineno for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.Import, ast.ImportFrom))
                 and any((m or "").split(".")[0] in ("paddle", "ppface3d", "ppldm", "ppapp", "mediapipe", "ppengine")
                         and m != "ppengine.quiet" for m in
                         ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module]))]
        assert calls, f"{where}: no quiet() call"
        assert not heavy or min(calls) < min(heavy), f"{where}: an import (line {min(heavy)}) before quiet()"

    tools = sorted(glob.glob(os.path.join(ROOT, "tools", "*.py")))
    assert len(tools) >= 5
    for f in tools:
        check(open(f).read(), os.path.relpath(f, ROOT))
    for nb in sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb"))):
        cell = next(c for c in json.load(open(nb))["cells"] if c["cell_type"] == "code")
        check("".join(cell["source"]), os.path.basename(nb))
