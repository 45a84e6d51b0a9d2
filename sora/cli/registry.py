"""``sora registry show | promote | rollback | register``: thin wrappers over :mod:`sora.registry` and the stages."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from sora.cli.common import EXIT_OK, EXIT_USAGE, add_config_args, tracking_uri


def cmd_show(args) -> int:
    from sora import registry

    uri = tracking_uri(args)
    rows = registry.show(uri, args.model_name)
    if not rows:
        print(f"no versions of {args.model_name} in {uri}")
    for r in rows:
        ndcg = f"{r['test_ndcg@10']:.4f}" if r["test_ndcg@10"] is not None else "-"
        print(f"v{r['version']:<4} {','.join(r['aliases']) or '-':<22} test ndcg@10 {ndcg}  {r['decision']}")
    return EXIT_OK


def cmd_promote(args) -> int:
    from sora import registry

    previous = registry.promote(tracking_uri(args), args.model_name, args.version, alias=args.alias)
    print(f"{args.alias}: {args.model_name} v{args.version} (was {previous or 'none'})")
    return EXIT_OK


def cmd_rollback(args) -> int:
    from sora import registry

    frm, to = registry.rollback(tracking_uri(args), args.model_name, alias=args.alias)
    print(f"{args.alias} rolled back: {args.model_name} v{frm} → v{to}")
    return EXIT_OK


def cmd_register(args) -> int:
    """Evaluate a trained model on its data, register it as challenger and (optionally) gate and promote it."""
    from sora import stages
    from sora.registry import check_reachable

    if not (args.data or args.prepared):
        print("sora registry register: give --data or --prepared", file=sys.stderr)
        return EXIT_USAGE
    uri = tracking_uri(args)

    check_reachable(uri)  # before any work: an unusable registry is one line, not a late traceback
    rec_cfg = stages.load_model(args.model).config
    with tempfile.TemporaryDirectory(prefix="sora-reg-") as tmp:
        prepared = (stages.Prepared.load(args.prepared) if args.prepared
                    else stages.prepare(args.data, rec_cfg, str(Path(tmp) / "prepared")))
        eval_json = str(Path(tmp) / "evaluation.json")
        stages.evaluate(args.model, prepared, eval_json, baselines=args.baselines)
        version = stages.register(uri, args.model_name, args.model, eval_json, prepared)
        print(f"registered {args.model_name} v{version} as challenger in {uri}")
        if args.promote_if_better:
            promote, reason = stages.compare(uri, args.model_name, version, args.model, prepared, args.margin,
                                             eval_json)
            print(reason)
            if promote:
                print(stages.promote(uri, args.model_name, version))
    return EXIT_OK


def add_parser(sub) -> None:
    from sora.config import RegistryConfig

    defaults = RegistryConfig()
    reg = sub.add_parser("registry", help="show versions, register, promote a version, roll back the champion")
    rs = reg.add_subparsers(dest="registry_command", required=True)
    commands = (("show", cmd_show, "list versions with aliases and decisions"),
                ("promote", cmd_promote, "move the champion alias to a version"),
                ("rollback", cmd_rollback, "move the champion alias back to the version it replaced"),
                ("register", cmd_register, "evaluate a trained model and register it as challenger"))
    for name, fn, helptext in commands:
        p = rs.add_parser(name, help=helptext)
        p.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else "
                       f"{defaults.tracking_uri})")
        p.add_argument("--model-name", default=defaults.model_name)
        if name in ("promote", "rollback"):
            p.add_argument("--alias", default=defaults.champion_alias)
        if name == "promote":
            p.add_argument("version")
        if name == "register":
            p.add_argument("--model", required=True, help="model directory or URI")
            p.add_argument("--data", help="the dataset it was trained on (directory or URI)")
            p.add_argument("--prepared", help="or its prepared-split artifact")
            p.add_argument("--baselines", action="store_true", help="also score the baselines")
            p.add_argument("--promote-if-better", action="store_true",
                           help="gate against the champion and promote when the challenger wins")
            p.add_argument("--margin", type=float, default=defaults.promotion_margin)
            add_config_args(p)
        p.set_defaults(func=fn)
