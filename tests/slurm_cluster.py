"""A private one-node Slurm cluster on this machine: munged, slurmctld and slurmd with their own
socket, ports, spool folders and slurm.conf in a temp folder, so nothing in /etc is used or
changed and another Slurm on the machine is left alone.

Needs Debian's `slurm-wlm` and `munge` (scripts/slurm/test-slurm.sh installs them) and root (the
daemons switch users and slurmd runs jobs as the submitting user). `SlurmCluster.start()`
raises `SlurmUnavailable` with the reason when the daemons cannot start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.test_study import terminate

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sacct")


class SlurmUnavailable(RuntimeError):
    """The Slurm daemons cannot run here; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/bin") if (p := Path(d) / name).is_file()), None
    )


def slurm_conf(folder: Path, node: str, cpus: int, munge_socket: Path) -> str:
    """A minimal slurm.conf: one node, no accounting, no cgroups (pgid process tracking works
    in a container), jobs run as root."""
    return f"""\
ClusterName=pytest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={folder}/ctld
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
PlugStackConfig={folder}/plugstack.conf
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=30
InactiveLimit=0
MinJobAge=600
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """munged + slurmctld + slurmd, each in the foreground of its own process group."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.node = socket.gethostname().split(".")[0]
        self.conf = folder / "slurm.conf"
        self.munge_socket = folder / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """The environment Slurm's commands need to talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        missing = [name for name in DAEMONS if not find(name)]
        if missing:
            raise SlurmUnavailable(
                f"not installed: {', '.join(missing)} (scripts/slurm/test-slurm.sh)"
            )
        if os.geteuid() != 0:
            raise SlurmUnavailable("the Slurm daemons need root here")
        for sub in ("ctld", "spool", "munge"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        (self.folder / "plugstack.conf").write_text("")
        self.conf.write_text(
            slurm_conf(self.folder, self.node, os.cpu_count() or 1, self.munge_socket)
        )
        self._start_munge()
        self._run("slurmctld", [find("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._run("slurmd", [find("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
        self._wait_idle()

    def _start_munge(self) -> None:
        key = Path("/etc/munge/munge.key")
        if not key.is_file():
            raise SlurmUnavailable(f"{key} missing (the munge package makes it)")
        m = self.folder / "munge"
        self._run("munged", [
            find("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
            f"--key-file={key}", f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
            f"--seed-file={m}/munged.seed",
        ])  # fmt: skip
        self._wait(lambda: self.munge_socket.exists(), "munged's socket", 20)

    def _run(self, name: str, cmd: list[str]) -> None:
        log = (self.folder / f"{name}.out").open("w")
        self.procs[name] = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _wait(self, ready, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited {proc.returncode}: {self.tail(name)}")
            if ready():
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"{what} not ready in {timeout_s:.0f} s: {self.tails()}")

    def _wait_idle(self) -> None:
        def idle() -> bool:
            out = self.command("sinfo", "-h", "-o", "%T", check=False)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        self._wait(idle, f"node {self.node} idle", 60)

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [find(args[0]) or args[0], *args[1:]],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def tail(self, name: str, chars: int = 1500) -> str:
        texts = []
        for path in (self.folder / f"{name}.out", self.folder / f"{name}.log"):
            if path.is_file():
                texts.append(path.read_text(errors="replace")[-chars:])
        return "\n".join(texts)

    def tails(self) -> str:
        return "\n".join(f"--- {name}\n{self.tail(name)}" for name in self.procs)

    def stop(self) -> None:
        """SIGTERM each daemon (slurmd first), SIGKILL its group after 30 s."""
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                terminate(proc, grace_s=30, kill_wait_s=10)
