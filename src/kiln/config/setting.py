"""`Setting`: the declaration of one config key (the tables in `keys_*.py` hold one per key)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A validator takes the (already type-checked) value and returns a problem or None.
Validator = Callable[[Any], "str | None"]

# The stages a setting can feed, in build order (kiln.build.stages.STAGES describes each stage).
STAGE_NAMES = ("base", "os", "kubernetes", "finalize")


@dataclass(frozen=True)
class Setting:
    name: str
    type: type  # str, int, bool, list (of str) or dict (str -> str)
    default: Any
    help: str
    file: str  # the file it normally lives in: common, os, kubernetes, containerd, cni
    validator: Validator | None = None
    derived: bool = False  # default computed from other keys unless set explicitly
    multiline: bool = False  # may hold newlines (e.g. a TOML fragment); other strings must be printable
    # where bytes come from or go to, or how the build VM runs, not what lands in the image (a mirror, a
    # proxy, the stand-in server's port, the output dir): left out of every stage ID, so changing it does
    # not force a rebuild
    location: bool = False
    # the names image-builder users give this setting in their var files (kiln config shows
    # `FILE (image-builder: NAME)` as the origin of a value set under such a name)
    aliases: tuple[str, ...] = ()
    # the stage (or stages) whose work it changes: its value goes into that stage's ID unless `location`
    stage: str | tuple[str, ...] = ""
    # a setting added after images were cached under stage IDs without it: at its default (what every such
    # image had) it stays out of the IDs, so that they stay cached; any other value goes in
    new_in_ids: bool = False

    def __post_init__(self) -> None:
        if not self.stages or not set(self.stages) <= set(STAGE_NAMES):
            raise ValueError(f"setting {self.name}: stage must be one or more of {STAGE_NAMES}")

    @property
    def stages(self) -> tuple[str, ...]:
        return (self.stage,) if isinstance(self.stage, str) and self.stage else tuple(self.stage)

    @property
    def type_name(self) -> str:
        return {str: "string", int: "number", bool: "bool", list: "list of strings", dict: "map"}[self.type]
