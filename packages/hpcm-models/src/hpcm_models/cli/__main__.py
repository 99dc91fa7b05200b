import sys

from hpcm_models.cli import main

sys.exit(main())
