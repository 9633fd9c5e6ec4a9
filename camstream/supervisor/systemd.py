"""Running under systemd: ``camstream systemd`` (the recipe that installs the service) and
``camstream reload PID`` (what the unit's ExecReload runs).

The recipe is printed with the paths of this copy, and tests/integration/test_systemd_real.py follows it
line by line in a container under a real systemd, so what it says is what was run.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import camstream

RECIPE = """\
# Run camstream as a systemd service: a recipe to follow line by line (as an admin).
# The unit files and the example configuration are in {units}/

# 1. A system user and group of its own (never root); desktop users who may attach a
#    display join the group.
sudo useradd --system --user-group --home-dir /var/lib/camstream --shell /usr/sbin/nologin camstream
sudo usermod -aG camstream "$USER"          # then log out and in again

# 2. Install camstream into its own virtualenv{origin}, with OpenCV's
#    headless build (no X libraries needed; [gui] instead of [headless] if windows will be
#    shown on this machine itself).
sudo python3 -m venv /opt/camstream
sudo /opt/camstream/bin/pip install {source}

# 3. The unit and the configuration (edit /etc/camstream/camstream.conf to taste).
sudo install -m 0644 {units}/camstream.service /etc/systemd/system/
sudo install -d -m 0755 /etc/camstream
sudo install -m 0644 {units}/camstream.conf /etc/camstream/

# 4. Users (the service reads /var/lib/camstream/users).
sudo install -d -m 0750 -o camstream -g camstream /var/lib/camstream
sudo -u camstream /opt/camstream/bin/camstream users add alice --users /var/lib/camstream/users

# 5. Enable and start it (this returns once the port answers and every worker reported);
#    check it.
sudo systemctl daemon-reload
sudo systemctl enable --now camstream
systemctl status camstream                  # Status: "0 clients, 0.0 fps in, ..."
/opt/camstream/bin/camstream status http://127.0.0.1:8080   # the port in camstream.conf

# 6. Attach a display (as a user in the camstream group): the newest frame of each client
#    in ~/camstream-view/<client>.jpg, once a second (Ctrl-C detaches)...
/opt/camstream/bin/camstream display --runtime-dir /run/camstream --snapshot ~/camstream-view
#    ...or, on a desktop with OpenCV's GUI build ([gui] in step 2), a window per client,
#    coming and going with your login:
mkdir -p ~/.config/systemd/user
cp {units}/camstream-display.service ~/.config/systemd/user/
systemctl --user daemon-reload && systemctl --user enable --now camstream-display

# 7. After adding or removing users, or editing workers/log-level in the configuration:
sudo systemctl reload camstream

# 8. Logs (one line per event, with a level; never a password).
journalctl -u camstream -f
"""


def units_dir() -> Path:
    """The unit files: next to the source tree, or where the package installed them."""
    source = Path(camstream.__file__).resolve().parent.parent / "systemd"
    if (source / "camstream.service").exists():
        return source
    return Path(sys.prefix) / "share" / "camstream" / "systemd"


def installed_from() -> Path | None:
    """The source tree or wheel this copy was installed from (pip records it, PEP 610), if it
    is still there: camstream is not on a package index, so the recipe installs that."""
    try:
        text = metadata.distribution("camstream").read_text("direct_url.json")
        url = urlparse(json.loads(text)["url"]) if text else None
    except (metadata.PackageNotFoundError, ValueError, KeyError, TypeError):
        return None
    if url is None or url.scheme != "file":
        return None
    path = Path(unquote(url.path))
    return path if path.exists() else None


def recipe() -> str:
    """The recipe with the paths of this copy: a clone, or the wheel or tree it came from."""
    units = units_dir()
    tree = units.parent
    if (tree / "setup.cfg").exists():
        return render(units, tree, " from this clone")
    origin = installed_from()
    if origin is not None:
        return render(units, origin, " from the wheel this copy came from" if origin.is_file()
                      else " from the source tree this copy came from")
    # installed some other way: say what to give pip
    return render(units, Path(f"camstream-{camstream.__version__}-py3-none-any.whl"),
                  " from a wheel (camstream is not on a package index: 'pip wheel --no-deps "
                  "-w DIR .' in a clone makes one)")


def render(units: Path, source: Path, origin: str) -> str:
    """README.md shows it rendered for the clone's own folder (units ``systemd``, source ``.``)."""
    return RECIPE.format(units=units, source=shlex.quote(f"{source}[headless]"), origin=origin)


class ReloadError(Exception):
    pass


def reload(pid: int) -> None:
    """SIGHUP to the daemon's supervisor (it re-reads the users file and the configuration's
    workers and log-level). Where /proc shows the process, a pid that is not camstream's is
    refused; under the unit's sandbox it may not (PrivateUsers= puts ExecReload in a user
    namespace of its own, and ProtectProc=invisible hides the others), and systemd's $MAINPID
    is trusted."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        title = None
    if title is not None and "camstream" not in title:
        raise ReloadError(f"process {pid} is not camstream ({title.strip()[:60]!r})")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadError(f"no process {pid}") from None
    except OSError as e:
        raise ReloadError(f"process {pid}: {e.strerror}") from None
