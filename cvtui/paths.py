"""Where cvtui keeps its data: the home directory with the catalog and the file mirror."""

from __future__ import annotations

import os
from pathlib import Path

from cvtui.errors import CvtuiError


def home_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--home, else $CVTUI_HOME, else the platform's user data dir; created 0700.

    A home that is a file, cannot be created, or is not readable and writable by this user is
    a CvtuiError naming it.
    """
    if explicit:
        path = Path(explicit).expanduser()
    elif os.environ.get("CVTUI_HOME"):
        path = Path(os.environ["CVTUI_HOME"]).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("cvtui"))
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise CvtuiError(f"cvtui home {path} exists and is not a directory") from None
    except OSError as exc:
        raise CvtuiError(f"cannot create cvtui home {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise CvtuiError(f"cvtui home {path} exists and is not a directory")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise CvtuiError(f"cvtui home {path} is not readable and writable by you")
    return path


def snapshot_archive(home: Path, code_hash: str) -> Path:
    """Where `cvtui run` leaves a code snapshot's tar for whichever engine dispatches it."""
    return home / "code" / f"{code_hash}.tar"


CONTROLLER_ID_FILE = "controller.id"


def controller_id(home: Path) -> str:
    """This home's own id (16 hex digits, made once, 0600), written into each run's record on
    its host: `cvtui reindex` restores only its own runs from a host root that another
    controller shares (a lab's common account). A file beside the catalog, so it outlives a
    lost catalog.db."""
    import secrets

    path = home / CONTROLLER_ID_FILE
    found = _read_id(path)
    if found:
        return found
    made = secrets.token_hex(8)
    part = home / f".{CONTROLLER_ID_FILE}.{os.getpid()}"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(made + "\n")
    try:
        os.link(part, path)  # the first maker wins ...
    except FileExistsError:
        found = _read_id(path)
        if found:
            return found  # ... and a second one reads its id back
        part.replace(path)  # a damaged file: replaced
    finally:
        part.unlink(missing_ok=True)
    return made


def _read_id(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return text if len(text) == 16 and all(c in "0123456789abcdef" for c in text) else None
