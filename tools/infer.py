"""Inference entry point: ``python tools/infer.py face3d ...`` or ``python tools/infer.py ldm ...``.

Thin: picks the zoo and hands it the rest of the command line.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ppengine.quiet import quiet  # noqa: E402

quiet()  # third-party chatter off (unless --verbose), before the heavy imports

USAGE = "usage: python tools/infer.py {face3d|ldm} [options]   (add --help after the task for its options)"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    task, rest = argv[0], argv[1:]
    if task == "face3d":
        from ppface3d.apps.cli import main as run
    elif task == "ldm":
        from ppldm.pipelines.cli import main as run
    else:
        print(f"unknown task {task!r}. {USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
