"""`python3 agent.pyz serve|exec ...`: refuse Pythons older than 3.8, else run the command."""

# Keep this file parseable by any python3 (and python2): it is what an old interpreter reads first.
import json
import sys

MIN_PYTHON = (3, 8)  # protocol.MIN_PYTHON, which old interpreters cannot import
EXIT_PYTHON_TOO_OLD = 3

if sys.version_info[:2] < MIN_PYTHON:
    # No f-strings here: this must parse on Pythons before 3.6.
    message = "cvtui's agent needs Python %d.%d or newer; %s is %s" % (  # noqa: UP031
        MIN_PYTHON[0],
        MIN_PYTHON[1],
        sys.executable,
        sys.version.split()[0],
    )
    error = {"code": "python_too_old", "message": message}
    sys.stdout.write(json.dumps({"event": "hello", "error": error}) + "\n")
    sys.stdout.flush()
    sys.exit(EXIT_PYTHON_TOO_OLD)

if __name__ == "__main__":
    # Each command imports only what it uses: a start costs what its modules cost to compile.
    if sys.argv[1:2] == ["exec"]:
        # `exec --leases-dir D --gpus 0,1 -- CMD ...`: hold GPU leases for the life of CMD
        from remote_agent.leases import exec_main

        sys.exit(exec_main(sys.argv[2:]))
    from remote_agent.agent import main

    sys.exit(main(sys.argv[1:]))
