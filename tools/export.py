"""`python tools/export.py -c CONFIG [--weights W] --target paddle|onnx|coreml ...`: thin wrapper over
ppengine.export.cli (see docs/export.md)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ppengine.quiet import quiet  # noqa: E402

quiet()  # third-party chatter off (unless --verbose), before the heavy imports

import ppface3d  # noqa: E402,F401  (registers face models and declares their export components)
import ppldm  # noqa: E402,F401  (registers diffusion models and declares their export components)
from ppengine.export.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
