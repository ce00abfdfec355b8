"""Where cvtui keeps its data: the home directory with the catalog and the file mirror."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--home, else $CVTUI_HOME, else the platform's user data dir; created 0700."""
    if explicit:
        path = Path(explicit).expanduser()
    elif os.environ.get("CVTUI_HOME"):
        path = Path(os.environ["CVTUI_HOME"]).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("cvtui"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
