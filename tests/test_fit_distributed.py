"""torchrun with 2 CPU processes (gloo) gives the centres and detector statistics of one process."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ddp_equivalence

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 480  # generous: the machine running the tests may be busy


def own_network_namespace() -> list[str]:
    """A command prefix that runs in a network namespace of its own with only loopback up
    (`unshare -rn`), or [] where that is not possible (then rendezvous and gloo are still
    pointed at 127.0.0.1 / lo)."""
    probe = ["unshare", "-rn", "sh", "-c", "ip link set lo up"]
    try:
        ok = subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] if ok else []


def torchrun(*args, cwd=None):
    """Run a 2-process torchrun (rendezvous on 127.0.0.1, gloo on lo, in a network namespace of
    its own where possible) in its own session; on a timeout the whole process group (torchrun
    and its workers) is killed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    cmd = [*own_network_namespace(), sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
           "--nproc_per_node=2", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", "--rdzv-id=imgclean-test",
           *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun did not finish within {TIMEOUT_S}s")
    return proc.returncode, output


@pytest.mark.slow
@pytest.mark.parametrize("covariance", ["tied", "class"])
def test_two_processes_give_the_single_process_centres_and_statistics(tmp_path, covariance):
    out = tmp_path / "ddp.npz"
    code, output = torchrun(ROOT / "tests" / "ddp_equivalence.py", out, covariance)
    assert code == 0, output[-3000:]
    got = np.load(out)
    assert int(got["world_size"]) == 2
    want = ddp_equivalence.run(None, covariance)
    for key, value in want.items():
        # To 1e-6 of each array's own scale: an element near 0 of a precision matrix whose large
        # entries are ~1e4 differs by float rounding of those, not by 1e-6 absolute.
        scale = max(1.0, float(np.abs(value).max()))
        error = float(np.abs(got[key] - value).max())
        assert error <= 1e-6 * scale, f"{key}: largest difference {error:.3g} for a scale of {scale:.3g}"


@pytest.mark.slow
def test_torchrun_fit_writes_one_model_recording_world_size(tmp_path, train_dir):
    code, output = torchrun("-m", "imgclean", "fit", train_dir, "-o", tmp_path / "m", "--device", "cpu",
                            "--epochs", "1", "--min-steps", "0", "--batch-size", "16", "--json", cwd=tmp_path)
    assert code == 0, output[-3000:]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["world_size"] == 2
    assert output.count('"thresholds"') == 1  # only rank 0 printed its summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("joined", [True, False])
def test_a_process_that_ran_in_a_group_leaves_without_the_interpreters_teardown(tmp_path, joined):
    """After destroy_process_group, gloo can abort the process during the interpreter's teardown
    (after the work is done); such a process leaves through os._exit with its exit code, its
    output flushed. A process that never joined a group exits normally (atexit runs)."""
    marker = tmp_path / "atexit-ran"
    code = (
        "import atexit, sys; marker = sys.argv[1]; atexit.register(lambda: open(marker, 'w').close()); "
        f"import imgclean.nn.distributed as d; d.group_closed = {joined}; "
        "from imgclean.cli import main; sys.argv = ['imgclean', 'info', sys.argv[2]]; main()"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(marker), str(tmp_path / "no-model")], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 1 and "no model at" in proc.stderr  # the command's own exit code and message
    assert marker.exists() is not joined
