"""``sora config show``."""

from __future__ import annotations

import json

from sora.cli.common import EXIT_OK, add_config_args, config_from


def cmd_show(args) -> int:
    cfg = config_from(args)
    if args.resolved:
        cfg = cfg.resolved()
    print(json.dumps(cfg.to_dict(), indent=2) if args.json else cfg.to_yaml(), end="")
    return EXIT_OK


def add_parser(sub) -> None:
    cfg = sub.add_parser("config", help="show the configuration").add_subparsers(dest="config_command", required=True)
    p = cfg.add_parser("show", help="print the config (defaults, then --config, then --set), every key")
    p.add_argument("--json", action="store_true", help="JSON instead of YAML")
    p.add_argument("--resolved", action="store_true",
                   help="fill the keys left null with what training uses for this split mode (sora.config.AUTO)")
    add_config_args(p)
    p.set_defaults(func=cmd_show)
