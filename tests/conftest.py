from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.cli import main

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CACHE = Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit"))


def run_cli(*args: str) -> int:
    """Run edgekit in this process (fast: torch is imported once) and return its exit code."""
    return main([str(a) for a in args])


def run_console(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed console entry point as a user would."""
    return subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="session")
def shared_stage_cache(tmp_path_factory) -> Path:
    """The session's stage cache (see `session_stage_cache`)."""
    return tmp_path_factory.mktemp("stage-cache")


@pytest.fixture
def one_torch_thread():
    """Training with two threads on a busy 2-core host is many times slower than with one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def example_build(tmp_path_factory) -> Path:
    """The bundled example built once for arm64, x86_64 and arm64-pte (what `edgekit build` does with no model)."""
    out = tmp_path_factory.mktemp("example")
    assert run_cli("build", "--target", "arm64,x86_64,arm64-pte", "--out", out, "--quiet") == 0
    return out


def build_env(script: str, *args: str) -> None:
    """Run one of the tools/ scripts that set up emulation (cached: seconds when already done)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("the emulation tools target x86_64 Linux hosts")
    if os.geteuid() != 0 and not shutil.which("qemu-aarch64-static"):
        pytest.skip("needs root (apt-get install qemu-user-static debootstrap) or those tools installed")
    done = subprocess.run(["bash", str(ROOT / "tools" / script), *args], capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="session")
def arm64_python():
    build_env("arm64_rootfs.sh")
    return [str(CACHE / "arm64" / "python3")]


@pytest.fixture(scope="session")
def haswell_python() -> list[str]:
    """This environment's Python on an emulated AVX2 CPU without AVX-512 or VNNI (QEMU's Haswell model), on
    any x86-64 host: the CPU class whose ONNX Runtime INT8 kernels saturate."""
    build_env("qemu_x86.sh")
    return ["qemu-x86_64-static", "-cpu", "Haswell", sys.executable]


@pytest.fixture(scope="session")
def arm64_image():
    build_env("docker_images.sh", "arm64")
    return "edgekit-arm64"


@pytest.fixture(scope="session")
def ssh_device(tmp_path_factory):
    """An SSH server on 127.0.0.1 standing in for a device: the ssh:// runner's copy-run-fetch path, for real."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd).exists():
        if os.geteuid() != 0:
            pytest.skip("needs an OpenSSH server (apt-get install openssh-server) or root to install it")
        subprocess.run(["apt-get", "install", "-y", "-qq", "openssh-server"], capture_output=True, check=True)
    folder = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    port = 20000 + os.getpid() % 20000
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPasswordAuthentication no\nStrictModes no\n"
        f"UsePAM no\nPidFile {folder / 'sshd.pid'}\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    server = subprocess.Popen([sshd, "-D", "-e", "-f", str(folder / "sshd_config")], stderr=subprocess.PIPE)
    options = f"-i {folder / 'client_key'} -o UserKnownHostsFile={folder / 'known_hosts'}"
    previous = os.environ.get("EDGEKIT_SSH_OPTIONS")
    os.environ["EDGEKIT_SSH_OPTIONS"] = options
    try:
        for _ in range(50):
            probe = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                                    *options.split(), "-p", str(port), f"{os.environ.get('USER', 'root')}@127.0.0.1",
                                    "true"], capture_output=True)
            if probe.returncode == 0:
                break
            time.sleep(0.2)
        else:
            pytest.skip(f"the test SSH server did not accept a login: {probe.stderr.decode()[-300:]}")
        yield f"ssh://{os.environ.get('USER', 'root')}@127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()
        if previous is None:
            os.environ.pop("EDGEKIT_SSH_OPTIONS", None)
        else:
            os.environ["EDGEKIT_SSH_OPTIONS"] = previous


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` (itself included) with its size and modification time: two calls
    compare equal only if nothing under `root` was added, removed, replaced or written."""
    state = {}
    for path in [root, *sorted(root.rglob("*"))] if root.exists() else []:
        info = path.lstat()
        state[str(path.relative_to(root))] = (info.st_size if path.is_file() else -1, info.st_mtime_ns)
    return state


def one_line_error(capsys_or_text, code: int, expected_code: int = 2, *words: str) -> str:
    """Assert the CLI's bad-input contract: the exit code, exactly one line on stderr, no traceback, and the
    words the message must name. Takes pytest's capsys or the stderr text of a subprocess."""
    text = capsys_or_text if isinstance(capsys_or_text, str) else capsys_or_text.readouterr().err
    message = text.strip()
    assert code == expected_code, message
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in message and "\x1b[" not in message, message
    for word in words:
        assert word in message, message
    return message


@pytest.fixture(scope="session", autouse=True)
def session_stage_cache(shared_stage_cache):
    """Builds share one stage cache for the session, as a user's builds share theirs (an identical stage, such as
    the example's ExecuTorch lowering in the default profiles, is made once); the user's own cache never decides
    a result. Tests that patch a stage's code or watch stages run use `fresh_stages`; tests/test_stage_cache.py
    uses a folder of its own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEKIT_STAGE_CACHE", str(shared_stage_cache))
        yield


@pytest.fixture
def fresh_stages(monkeypatch):
    """Every stage of this test's builds is made afresh."""
    monkeypatch.setenv("EDGEKIT_STAGE_CACHE", "off")
