"""config: inputs to settings.

The settings table (each key declared once), the image-builder tables, the JSON/HCL readers, layering and
validation, and the typed, frozen `Config` that the rest of kiln reads.

Imports: `kiln.core` only. Only this wing and the CLI read the process environment.
"""

from kiln.config.derive import (
    CONTAINERD_RELEASE,
    CRICTL_RELEASE,
    DEFAULT,
    DERIVED,
    RUNC_RELEASE,
    derived_kubernetes,
)
from kiln.config.environ import ANSIBLE_PASSED, default_runtime
from kiln.config.loading import (
    CLI,
    TARGET_RE,
    Config,
    check_target,
    coerce,
    load,
    repo_root,
    targets,
)
from kiln.config.readers import hcl_top_level_names

__all__ = [
    "ANSIBLE_PASSED",
    "CLI",
    "CONTAINERD_RELEASE",
    "CRICTL_RELEASE",
    "DEFAULT",
    "DERIVED",
    "RUNC_RELEASE",
    "TARGET_RE",
    "Config",
    "check_target",
    "coerce",
    "default_runtime",
    "derived_kubernetes",
    "hcl_top_level_names",
    "load",
    "repo_root",
    "targets",
]
