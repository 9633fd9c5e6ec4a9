"""``camstream systemd``: the recipe that installs camstream as a system service."""
from __future__ import annotations

import sys
from pathlib import Path

import camstream

RECIPE = """\
# Run camstream as a systemd service: a recipe to follow line by line (as an admin).
# The unit files are in {units}

# 1. A system user and group of its own (never root); desktop users who may attach a
#    display join the group.
sudo useradd --system --user-group --home-dir /var/lib/camstream --shell /usr/sbin/nologin camstream
sudo usermod -aG camstream "$USER"          # then log out and in again

# 2. Install camstream into its own virtualenv.
sudo python3 -m venv /opt/camstream
sudo /opt/camstream/bin/pip install {source}

# 3. The unit and the configuration (edit /etc/camstream/camstream.conf to taste).
sudo install -m 0644 {units}/camstream.service /etc/systemd/system/
sudo install -d -m 0755 /etc/camstream
sudo install -m 0644 {units}/camstream.conf /etc/camstream/

# 4. Users (the service reads /var/lib/camstream/users).
sudo install -d -m 0750 -o camstream -g camstream /var/lib/camstream
sudo -u camstream /opt/camstream/bin/camstream users add alice --users /var/lib/camstream/users

# 5. Enable and start it; check it.
sudo systemctl daemon-reload
sudo systemctl enable --now camstream
systemctl status camstream                  # Status: "0 clients, 0.0 fps in, ..."
/opt/camstream/bin/camstream status         # per-client counters (from /healthz)

# 6. Attach a display from the desktop (as the desktop user, in the camstream group).
/opt/camstream/bin/camstream display --runtime-dir /run/camstream
#    or let it come and go with your login:
mkdir -p ~/.config/systemd/user
cp {units}/camstream-display.service ~/.config/systemd/user/
systemctl --user daemon-reload && systemctl --user enable --now camstream-display

# 7. After adding or removing users, or editing workers/log-level in the configuration:
sudo systemctl reload camstream

# 8. Logs.
journalctl -u camstream -f
"""


def units_dir() -> Path:
    """The unit files: next to the source tree, or where the package installed them."""
    source = Path(camstream.__file__).resolve().parent.parent / "systemd"
    if (source / "camstream.service").exists():
        return source
    return Path(sys.prefix) / "share" / "camstream" / "systemd"


def recipe() -> str:
    units = units_dir()
    tree = units.parent
    source = tree if (tree / "setup.cfg").exists() else "camstream"
    return RECIPE.format(units=units, source=source)
