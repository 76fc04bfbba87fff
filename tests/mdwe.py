"""Commands run with write+execute memory denied, as systemd's MemoryDenyWriteExecute=yes
denies it: prctl(PR_SET_MDWE) in a launcher that then becomes the command (Linux 6.3 on;
the setting is kept across execve)."""
import subprocess
import sys

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1

LAUNCH = ("import ctypes, os, sys\n"
          f"if ctypes.CDLL(None).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
          "    sys.exit(77)\n"
          "os.execv(sys.executable, [sys.executable, '-m', 'kws_stream.cli', *sys.argv[1:]])\n")


def supported() -> bool:
    """Whether this kernel takes PR_SET_MDWE (tried in a child, which it would otherwise bind)."""
    r = subprocess.run([sys.executable, "-c", f"import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl("
                        f"{PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0)"], timeout=30)
    return r.returncode == 0


def kws_argv(*args) -> list[str]:
    """kws-stream ARGS under the denial."""
    return [sys.executable, "-c", LAUNCH, *map(str, args)]
