"""`python tools/app.py [--host 127.0.0.1] [--port 7860] [-c ...] [--weights ...]`: the Gradio app (ppapp)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ppengine.quiet import quiet  # noqa: E402

quiet()  # third-party chatter off (unless --verbose), before the heavy imports

from ppapp.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
