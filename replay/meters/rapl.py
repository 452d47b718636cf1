"""CPU package and DRAM energy through the Linux powercap interface (RAPL).

Layout read (root is a parameter so tests can lay out a fake tree in a temporary folder):

    <root>/intel-rapl:0/name              "package-0"        (Intel, and AMD Zen since Linux 5.8,
    <root>/intel-rapl:0/energy_uj          cumulative uJ      which registers under intel-rapl)
    <root>/intel-rapl:0/max_energy_range_uj                   where energy_uj wraps to 0
    <root>/intel-rapl:0/intel-rapl:0:0/name  "core" | "uncore" | "dram"
    <root>/intel-rapl:1/name              "psys"             (platform, not added to packages)

Top-level zones of any `*-rapl:N` control type are taken (intel-rapl, amd-rapl); the
`intel-rapl-mmio` zones duplicate the MSR ones on recent Intel parts and are used only when no
MSR zone exists, so nothing is counted twice. AMD's out-of-tree `amd_energy` hwmon driver
(energyN_input in uJ, labels Esocket0..) is read as package domains when there is no powercap.

Wraparound: energy_uj wraps at max_energy_range_uj (about 262 kJ, i.e. minutes at a few hundred
watts); every read compares with the previous raw value and adds the range on a wrap, so a
reader polling faster than one wrap period (the MeterSet polls at 10-20 Hz) never loses energy.

Permissions: since Linux 5.10 (CVE-2020-8694, "Platypus") energy_uj is readable by root only.
An unreadable file is a PermissionDeniedError saying what to change, never a zero.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrw.errors import NotSupportedError, PermissionDeniedError

from .base import Channel, Meter

POWERCAP_ROOT = Path("/sys/class/powercap")
HWMON_ROOT = Path("/sys/class/hwmon")

_TOP = re.compile(r"^(?P<kind>[a-z-]*rapl(?:-mmio)?):(?P<n>\d+)$")
_SUB = re.compile(r"^[a-z-]*rapl(?:-mmio)?:\d+:\d+$")


@dataclass(slots=True)
class _Zone:
    channel: Channel
    energy_path: Path
    max_range_uj: int | None  # None: a 64-bit driver counter that does not wrap in practice
    last_raw: int = 0
    total_uj: int = 0  # accumulated since open, wraps included
    wraps: int = 0


def _read_int(path: Path) -> int:
    with open(path, "rb") as f:
        return int(f.read().strip())


def _read_name(path: Path) -> str:
    with open(path, "r") as f:
        return f.read().strip()


def _domain_of(name: str) -> str | None:
    if name.startswith("package"):
        return "cpu"
    return {"dram": "dram", "psys": "psys", "core": "cpu_core", "uncore": "cpu_uncore"}.get(name)


def permission_hint(paths: list[Path]) -> str:
    shown = " ".join(sorted({str(p) for p in paths})[:4])
    return (
        f"cannot read {shown}: RAPL energy files are root-only since Linux 5.10 (CVE-2020-8694). "
        f"Run as root, or allow reading until the next reboot: sudo chmod o+r {shown}"
    )


class RaplMeter(Meter):
    """Package, DRAM (and psys/core/uncore where present) energy per CPU socket."""

    name = "rapl"

    def __init__(self, root: str | os.PathLike = POWERCAP_ROOT, hwmon_root: str | os.PathLike | None = HWMON_ROOT):
        self.root = Path(root)
        self.hwmon_root = Path(hwmon_root) if hwmon_root is not None else None
        self.zones: list[_Zone] = []
        self._lock = threading.Lock()
        self._notes: list[str] = []
        self.interface = ""
        self._prev: dict[str, tuple[float, float]] = {}

    # -------------------------------------------------------------------------- discovery

    def _powercap_zones(self) -> list[tuple[Path, str]]:
        """(directory, channel-name prefix) of every zone to read, package zones first."""
        if not self.root.is_dir():
            return []
        tops: dict[str, list[Path]] = {}
        for d in sorted(self.root.iterdir()):
            m = _TOP.match(d.name)
            if m and d.is_dir():
                tops.setdefault(m["kind"], []).append(d)
        msr = [k for k in tops if not k.endswith("-mmio")]
        kinds = msr or list(tops)
        if msr and any(k.endswith("-mmio") for k in tops):
            self._notes.append("RAPL: intel-rapl-mmio zones ignored (they duplicate the MSR zones)")
        out: list[tuple[Path, str]] = []
        for k in sorted(kinds):
            for top in sorted(tops[k], key=lambda p: int(p.name.rsplit(":", 1)[1])):
                out.append((top, ""))
                for sub in sorted(top.iterdir()):
                    if _SUB.match(sub.name) and sub.is_dir():
                        out.append((sub, top.name))
        self.interface = ",".join(sorted(kinds))
        return out

    def _hwmon_zones(self) -> list[_Zone]:
        if self.hwmon_root is None or not self.hwmon_root.is_dir():
            return []
        zones = []
        for d in sorted(self.hwmon_root.iterdir()):
            try:
                if _read_name(d / "name") != "amd_energy":
                    continue
            except OSError:
                continue
            for lab in sorted(d.glob("energy*_label")):
                label = _read_name(lab)
                if not label.startswith("Esocket"):
                    continue  # per-core counters are inside the socket's
                sock = label.removeprefix("Esocket")
                path = d / lab.name.replace("_label", "_input")
                ch = Channel(f"cpu:package-{sock}", "cpu", "J", f"package-{sock}")
                zones.append(_Zone(ch, path, None))
        if zones:
            self.interface = "amd_energy (hwmon)"
        return zones

    def open(self) -> None:
        zones: list[_Zone] = []
        unreadable: list[Path] = []
        for d, parent in self._powercap_zones():
            try:
                name = _read_name(d / "name")
            except PermissionError:
                unreadable.append(d / "name")
                continue
            except OSError:
                continue
            dom = _domain_of(name)
            if dom is None:
                self._notes.append(f"RAPL: zone {d.name} named {name!r} is not a known domain; not read")
                continue
            # Channel names are unique per socket: "dram:package-0", "cpu:package-0", "psys:psys".
            if parent:
                try:
                    pkg = _read_name(d.parent / "name")
                except OSError:
                    pkg = parent
                device = f"{pkg}/{name}" if dom != "dram" else pkg
            else:
                device = name
            ch = Channel(f"{dom}:{device}", dom, "J", device)
            try:
                rng = _read_int(d / "max_energy_range_uj")
            except PermissionError:
                unreadable.append(d / "max_energy_range_uj")
                continue
            except (OSError, ValueError):
                rng = None
                self._notes.append(f"RAPL: {d / 'max_energy_range_uj'} unreadable; wraparound of {ch.name} not corrected")
            zones.append(_Zone(ch, d / "energy_uj", rng))
        if not zones and not unreadable:
            zones = self._hwmon_zones()
        if not zones and not unreadable:
            where = str(self.root) + (f" or {self.hwmon_root} (amd_energy)" if self.hwmon_root else "")
            raise NotSupportedError(
                f"RAPL: no energy zones on this machine (none under {where}: no RAPL on this CPU, a VM, "
                "or the intel_rapl_msr module not loaded)"
            )
        for z in zones:
            try:
                z.last_raw = _read_int(z.energy_path)
            except PermissionError:
                unreadable.append(z.energy_path)
        if unreadable:
            raise PermissionDeniedError("RAPL: " + permission_hint(unreadable))
        self.zones = zones

    # -------------------------------------------------------------------------- counters

    def channels(self) -> list[Channel]:
        return [z.channel for z in self.zones]

    def read(self) -> dict[str, float]:
        out = {}
        with self._lock:
            for z in self.zones:
                raw = _read_int(z.energy_path)
                if raw >= z.last_raw:
                    z.total_uj += raw - z.last_raw
                elif z.max_range_uj is not None:
                    # The counter passed max_energy_range_uj and restarted from 0.
                    z.total_uj += z.max_range_uj - z.last_raw + raw
                    z.wraps += 1
                else:
                    self._note_once(f"RAPL: {z.channel.name} went backwards with no known range; step ignored")
                z.last_raw = raw
                out[z.channel.name] = z.total_uj / 1e6
        return out

    def sample(self, t: float) -> list[dict[str, Any]]:
        """One row per zone: cumulative energy and the average power since the last row."""
        vals = self.read()
        rows = []
        for z in self.zones:
            e = vals[z.channel.name]
            row: dict[str, Any] = {"t_s": t, "source": z.channel.domain, "device": z.channel.device, "energy_j": e}
            prev = self._prev.get(z.channel.name)
            if prev is not None and t > prev[0]:
                row["power_w"] = (e - prev[1]) / (t - prev[0])
            self._prev[z.channel.name] = (t, e)
            rows.append(row)
        return rows

    def _note_once(self, msg: str) -> None:
        if msg not in self._notes:
            self._notes.append(msg)

    def notes(self) -> list[str]:
        n = list(self._notes)
        for z in self.zones:
            if z.wraps:
                n.append(f"RAPL: {z.channel.name} wrapped {z.wraps} time(s); corrected with max_energy_range_uj")
        return n

    def describe(self) -> dict[str, Any]:
        return {
            "interface": self.interface,
            "root": str(self.root),
            "zones": [
                {
                    "channel": z.channel.name,
                    "domain": z.channel.domain,
                    "file": str(z.energy_path),
                    "max_energy_range_j": None if z.max_range_uj is None else z.max_range_uj / 1e6,
                }
                for z in self.zones
            ],
        }
