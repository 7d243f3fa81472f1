"""The verl plugin's tests. They run in the plugin's own venv (.venv-verl, built from
requirements-verl.lock: `make test-verl`); where verl or the plugin is not installed (editalign's
main venv, whose transformers verl 0.9.1 does not accept) this directory is not collected.

(Not named tests/verl: with tests/ on sys.path that directory would import as ``verl``.)
"""

import importlib.util

if importlib.util.find_spec("verl") is None or importlib.util.find_spec("editalign_verl") is None:
    collect_ignore_glob = ["test_*.py"]

