"""New-user defects (issue 13, items 2-4 and 9), each through the real CLI or the README itself."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo_positive.opus"


def kws(*args):
    return subprocess.run([sys.executable, "-m", "kws_stream.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_readme_python_api_snippet_finds_what_the_cli_finds():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1).replace('"call.opus"', repr(str(DEMO)))
    api = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert api.returncode == 0, api.stderr
    cli = kws("--file", DEMO, "--pub", "none", "--hop-seconds", "0.5")
    n_cli = len([line for line in cli.stdout.splitlines() if '"detection"' in line])
    n_api = len([line for line in api.stdout.splitlines() if "'detection'" in line])
    assert n_cli >= 1 and n_api == n_cli


def test_realtime_with_jobs_is_a_usage_error():
    r = kws("--file", DEMO, DEMO, "--realtime", "--jobs", "2", "--pub", "none")
    assert r.returncode == 2 and "--realtime" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:99999", "tcp://127.0.0.1:0", "tcp://127.0.0.1:port",
                                      "tcp://127.0.0.1", "udp://127.0.0.1:5556", "ipc://"])
def test_bad_endpoints_are_usage_errors(endpoint):
    r = kws("--file", DEMO, "--pub", endpoint)
    assert r.returncode == 2 and "--pub" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_ipc_endpoint_in_a_missing_folder_is_one_plain_line():
    endpoint = "ipc:///nonexistent-kws/dir/x.sock"
    r = kws("--file", DEMO, "--pub", endpoint)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"kws-stream: error: cannot bind {endpoint}: No such file or directory"


@pytest.mark.parametrize("endpoint", ["bogus", "none", "tcp://127.0.0.1:*", "ipc://"])
def test_listen_bad_endpoint_is_one_line(endpoint):
    """What a daemon may bind to but listen cannot connect to is refused, and the line says what to give."""
    r = kws("listen", "--connect", endpoint, "--count", "1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"--connect {endpoint}: give the daemon's tcp://HOST:PORT or ipc://PATH" in r.stderr


def test_listen_accepts_short_topic_names(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    sub = subprocess.Popen([sys.executable, "-m", "kws_stream.cli", "listen", "--connect", endpoint, "--topic",
                            "detection", "--count", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    r = kws("--file", DEMO, "--pub", endpoint, "--realtime", "--quiet")
    out, err = sub.communicate(timeout=30)
    assert r.returncode == 0 and sub.returncode == 0, err
    assert '"type": "detection"' in out


@pytest.mark.parametrize("args,said", [
    (("--file", DEMO, "--threshhold", "0.5"), "unrecognized option --threshhold"),  # argparse blamed 0.5
    (("--file", DEMO, DEMO, "--threshhold=0.5", "x"), "unrecognized option --threshhold"),
    ((DEMO,), f"unexpected argument '{DEMO}'"),  # --file forgotten
    (("--file", DEMO, "--thresh", "0.5"), "unrecognized option --thresh"),  # no abbreviations
    (("listen", "--bogus"), "see kws-stream listen --help"),
    (("listen", "--connect", "none"), "give the daemon's tcp://HOST:PORT"),
    (("listen", "--topic", "bogus"), "--topic bogus: no event has that topic"),
])
def test_a_mistyped_command_line_names_the_mistake(args, said):
    r = kws(*args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and said in r.stderr, r.stderr

