"""`python tools/convert_deca.py -c configs/deca_release.yml --out deca.safetensors -o model.checkpoint=deca_model.tar`:
DECA's released torch checkpoint -> safetensors for `tools/infer.py face3d --weights` (read without torch)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ppengine.quiet import quiet  # noqa: E402

quiet()  # third-party chatter off (unless --verbose), before the heavy imports

import ppface3d  # noqa: E402,F401  (registers DECARelease)
from ppface3d.models.deca_release import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
