"""
iemkey as a Salt extension: ``pip install .`` (or ``salt-pip install``) puts the formula's
``_modules``, ``_states``, ``_runners`` and ``_utils`` here as ``modules``, ``states``, ``runners``
and ``utils``, and the ``salt.loader`` entry point points Salt's loader at this package, so the
``iemkey`` execution module, state and runner load without file_roots or ``saltutil.sync_*``.
The formula's SLS files (``salt/iemkey/``) ship in ``formula/`` for file_roots.
"""

import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
FORMULA_DIR = os.path.join(PACKAGE_DIR, "formula")  # file_roots entry for iemkey/init.sls and the reactors
