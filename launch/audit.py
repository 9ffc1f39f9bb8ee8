"""Audit a data root for duplicates, near-duplicates and leakage between Training and Testing.

    python launch/audit.py /data/brain-mri                 # Markdown summary + <root-name>-audit.json
    python launch/audit.py /data/brain-mri --html audit/   # plus contact sheets (audit/index.html)
"""

import sys

from brainmri.cli.audit import main

if __name__ == "__main__":
    sys.exit(main())
