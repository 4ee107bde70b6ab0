"""A Triton backend's config ``parameters`` that neither that backend nor polystack reads: ignored, as Triton's
backends ignore them (metadata, other tools' settings), with one warning, which is where a typo is told."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

log = logging.getLogger("polystack.server")


def warn_unread(parameters: Sequence[tuple[str, str]], read: Collection[str], backend: str) -> None:
    """Warn once of the ``parameters`` (name, string value) whose names are not among those ``backend`` (its
    words: "Triton's PyTorch backend") ``read``s."""
    ignored = sorted(key for key, _ in parameters if key not in read)
    if ignored:
        log.warning(
            f"the config sets parameters that neither {backend} nor polystack reads; they are ignored, as Triton "
            "ignores them (check the names of those meant for the runtime)",
            extra={"parameters": ignored, "read": sorted(read)},
        )
