"""One module per command; `COMMANDS` lists the modules whose `command` the CLI registers."""

COMMANDS = [
    "robustcli.commands.models",
    "robustcli.commands.attack",
    "robustcli.commands.certify",
    "robustcli.commands.tightness",
    "robustcli.commands.train_ibp",
    "robustcli.commands.analyze",
    "robustcli.commands.eval",
    "robustcli.commands.vnncomp",
    "robustcli.commands.train",
    "robustcli.commands.distill",
    "robustcli.commands.threshold",
    "robustcli.commands.train_moe",
]
