"""The one Runtime the tests pass down, as the CLI would make it (this process's environment, kiln's venv
first on PATH, the checkout as the data root)."""

from kiln.config import default_runtime

RUNTIME = default_runtime()
