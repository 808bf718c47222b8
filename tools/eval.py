"""`python tools/eval.py -c CONFIG [-o key=value ...]`: thin wrapper over ppengine.cli.eval_main."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ppengine.quiet import quiet  # noqa: E402

quiet()  # third-party chatter off (unless --verbose), before the heavy imports

import ppengine.toy  # noqa: E402,F401  (registers the engine's toy model: configs/toy.yml)
import ppface3d  # noqa: E402,F401  (registers face models, datasets, metrics)
import ppldm  # noqa: E402,F401  (registers diffusion models, datasets, metrics)
from ppengine.cli import eval_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(eval_main())
