import sys

from hf_eenet.cli import console_main

sys.exit(console_main())
