import sys

from service.cli import main

# Guarded: vLLM's engine processes start with spawn and import this module again.
if __name__ == "__main__":
    sys.exit(main())
