"""``python -m brainmri.data.phantoms``: see ``brainmri.data.phantoms.cli``."""

from brainmri.data.phantoms.cli import main

main()
