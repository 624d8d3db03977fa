"""Running the project's scripts inside the test process."""

def run_main(main, argv, capsys):
    """A script's ``main`` (wrapped by common.cli) in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err
