"""`python -m robustcli` and `torchrun -m robustcli`: the CLI, without the current folder on sys.path."""

from robustcli.safe_path import drop_current_folder

if __name__ == "__main__":  # run as `python -m`, not imported
    drop_current_folder()

from robustcli.cli import main  # noqa: E402 - must follow the sys.path fix

if __name__ == "__main__":
    main()
