"""`radfusion federate`: the same program for a simulation on one machine and for a
consortium's deployment.

    simulate   all of it on loopback: SuperLink, one SuperNode per site, the run
    keys       (server operator) CA, SuperLink certificate, a key pair per site
    server     (server operator) the SuperLink, TLS and site authentication on
    register   (server operator) admit a site's public key
    site       (each site) its SuperNode, over its own cohort
    run        (server operator) submit a run and follow it to its checkpoint"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from radfusion.errors import UserError
from radfusion.training.federated.job import STRATEGIES, FederatedJob

log = logging.getLogger(__name__)


def _job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", action="append", type=Path, required=True, help="a radfusion train config (repeat, in order)"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="the server's run folder: checkpoint, provenance, resume state"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-epochs", type=int, default=1, help="epochs each site trains per round")
    p.add_argument("--strategy", choices=STRATEGIES, default="fedavg")
    p.add_argument("--proximal-mu", type=float, default=0.01, help="FedProx's proximal weight")
    p.add_argument("--server-lr", type=float, default=0.01, help="FedAdam's server learning rate")
    p.add_argument("--no-secagg", action="store_true", help="aggregate in the clear (SecAgg+ is on by default)")
    p.add_argument("--secagg-clip", type=float, default=8.0, help="SecAgg+'s value range [-clip, clip]")
    p.add_argument("--dp-noise", type=float, default=0.0, help="client-side DP: noise multiplier (0: off)")
    p.add_argument("--dp-clip", type=float, default=1.0, help="client-side DP: L2 clip of each site's update")
    p.add_argument("--dp-delta", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds the run may take")
    p.add_argument(
        "--site-wait", type=float, default=600.0, help="seconds the server waits for every site to connect and answer"
    )


def _job(args: argparse.Namespace, sites: int) -> FederatedJob:
    missing = [str(c) for c in args.config if not c.is_file()]
    if missing:
        raise UserError(f"--config {missing[0]} is not a file", "give radfusion train's YAML configs")
    try:
        return _job_of(args, sites)
    except ValueError as exc:
        raise UserError(str(exc), "see radfusion federate run --help") from exc


def _job_of(args: argparse.Namespace, sites: int) -> FederatedJob:
    return FederatedJob.from_files(
        args.config,
        site_wait=args.site_wait,
        out=str(args.out.resolve()),
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        min_sites=sites,
        strategy=args.strategy,
        proximal_mu=args.proximal_mu,
        server_lr=args.server_lr,
        secagg=not args.no_secagg,
        secagg_clip=args.secagg_clip,
        dp_noise=args.dp_noise,
        dp_clip=args.dp_clip,
        dp_delta=args.dp_delta,
        seed=args.seed,
    )


def _site_pairs(values: list[str]) -> dict[str, Path]:
    sites: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if name in sites:
            raise UserError(f"--site {name} is given twice", "give each site one name")
        if not sep or not name.isidentifier() or not folder:
            raise UserError(
                f"--site {value!r} is not NAME=FOLDER", "name each site and its cohort: --site a=runs/sites/site-1"
            )
        if not Path(folder).is_dir():
            raise UserError(
                f"--site {name}: {folder} is not a folder",
                "give the cohort folder radfusion synth or cohort build wrote",
            )
        sites[name] = Path(folder)
    if len(sites) < 2:
        raise UserError("a federation needs at least two --site", "give --site NAME=FOLDER for each site")
    return sites


def _stop(signum: int, _frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
    sys.exit(128 + signum)


def _simulate(args: argparse.Namespace) -> None:
    from radfusion.training.federated.launch import simulate

    # A stopped simulation (SIGTERM, as from a scheduler) unwinds like Ctrl-C, so the
    # Flower processes it started are stopped with it, not left running.
    signal.signal(signal.SIGTERM, _stop)
    sites = _site_pairs(args.site)
    job = _job(args, len(sites))
    path = simulate(job, sites, args.out, secure=not args.insecure, timeout=args.timeout, threads=args.threads)
    print(f"checkpoint: {path}", flush=True)


def _keys(args: argparse.Namespace) -> None:
    from radfusion.training.federated.pki import Pki, add_site_key, make_pki

    bad = [s for s in args.site if not s.isidentifier()]
    if bad:
        raise UserError(f"--site {bad[0]!r} is not a plain name", "name sites with letters, digits and underscores")
    pki = Pki(args.out)
    if args.add_site:
        if not pki.ca.is_file():
            raise UserError(f"--out {args.out} holds no federation's keys", "make them first, without --add-site")
        taken = [s for s in args.site if pki.site_public_key(s).exists()]
        if taken:
            raise UserError(f"site {taken[0]} has a key already", "choose another name")
        for site in args.site:
            add_site_key(pki, site)
    elif pki.ca.is_file():
        raise UserError(
            f"--out {args.out} holds a federation's keys already",
            "keep them (--add-site --site NAME adds a site), or choose another folder",
        )
    else:
        pki = make_pki(args.out, args.site, args.host or [])
    print(f"CA: {pki.ca}  (give it to every site)")
    for site in args.site:
        print(f"site {site}: {pki.site_key(site)} (to the site, privately), {pki.site_public_key(site)} (register it)")


def _exec(command: list[str], home: Path) -> None:
    from radfusion.training.federated.launch import flower_env

    env = flower_env(home)
    os.execvpe(command[0], command, env)


def _server(args: argparse.Namespace) -> None:
    from radfusion.training.federated.launch import superlink_command
    from radfusion.training.federated.pki import Pki

    if args.keys is None and not args.insecure:
        raise UserError("no --keys", "give the folder radfusion federate keys wrote (or --insecure, for debugging)")
    pki = None if args.insecure else Pki(args.keys)
    if pki is not None and not pki.server_cert.is_file():
        raise UserError(f"--keys {args.keys} holds no server.pem", "make the keys first: radfusion federate keys")
    _exec(superlink_command(pki, args.host, args.port, args.state), args.state / "flower-home")


def _register(args: argparse.Namespace) -> None:
    from radfusion.training.federated.launch import register_site, write_connection

    home = args.state / "flower-home"
    write_connection(home, args.superlink, args.ca)
    register_site(home, args.public_key)
    print(f"registered {args.public_key.name}")


def _site(args: argparse.Namespace) -> None:
    from radfusion.training.federated.launch import supernode_command

    if not args.cohort.is_dir():
        raise UserError(f"--cohort {args.cohort} is not a folder", "give the site's cohort folder")
    if not (args.cohort / "clinical.csv").is_file():
        raise UserError(
            f"--cohort {args.cohort} has no clinical table clinical.csv (it holds the outcomes)",
            "give the folder radfusion synth or cohort build wrote",
        )
    if args.key is not None and not args.key.is_file():
        raise UserError(f"--key {args.key} is not a file", "give this site's private key from the server operator")
    command = supernode_command(args.superlink, args.ca, args.key, args.cohort, args.work, args.port)
    args.work.mkdir(parents=True, exist_ok=True)
    _exec(command, args.work / "flower-home")


def _run(args: argparse.Namespace) -> None:
    from radfusion.training.federated.launch import submit, write_connection

    job = _job(args, args.sites)
    home = args.out / "flower-home"
    write_connection(home, args.superlink, args.ca)
    submit(home, job, args.out, args.timeout)
    print(f"checkpoint: {args.out / 'checkpoints' / 'best.ckpt'}", flush=True)


def build_parser(prog: str = "radfusion federate") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)

    p = sub.add_parser("simulate", help="a whole federation on this machine, over loopback")
    p.add_argument("--site", action="append", default=[], required=True, help="NAME=COHORT_FOLDER (repeat per site)")
    p.add_argument("--insecure", action="store_true", help="no TLS and no site authentication (for debugging only)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per site (the sites share this machine)")
    _job_options(p)
    p.set_defaults(func=_simulate)

    p = sub.add_parser("keys", help="CA, SuperLink certificate and a key pair per site")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--site", action="append", required=True, help="a site's name (repeat)")
    p.add_argument(
        "--host",
        action="append",
        help="a name or IP address the sites dial the SuperLink at (repeat; 127.0.0.1 and localhost are always "
        "added: the SuperLink's own processes dial them)",
    )
    p.add_argument("--add-site", action="store_true", help="add key pairs for new sites to an existing --out")
    p.set_defaults(func=_keys)

    p = sub.add_parser("server", help="the SuperLink (TLS and site authentication on)")
    p.add_argument("--keys", type=Path, help="the folder radfusion federate keys wrote")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=9093)
    p.add_argument("--state", type=Path, required=True, help="the SuperLink's state (its database), for restarts")
    p.add_argument("--insecure", action="store_true", help="no TLS and no site authentication (for debugging only)")
    p.set_defaults(func=_server)

    p = sub.add_parser("register", help="admit a site's public key to the SuperLink")
    _connection_options(p)
    p.add_argument("--state", type=Path, required=True, help="where the flwr CLI keeps its connection")
    p.add_argument("public_key", type=Path)
    p.set_defaults(func=_register)

    p = sub.add_parser("site", help="this site's SuperNode over its cohort")
    _connection_options(p)
    p.add_argument("--key", type=Path, help="this site's private key (from the server operator)")
    p.add_argument(
        "--cohort", type=Path, required=True, help="the site's cohort folder (radfusion synth / cohort build)"
    )
    p.add_argument("--work", type=Path, required=True, help="the site's working folder (image cache, policy)")
    p.add_argument("--port", type=int, default=9094, help="the SuperNode's local port for its ClientApp processes")
    p.set_defaults(func=_site)

    p = sub.add_parser("run", help="submit a run to the SuperLink and follow it")
    _connection_options(p)
    p.add_argument("--sites", type=int, required=True, help="how many sites the run waits for")
    _job_options(p)
    p.set_defaults(func=_run)
    return parser


def _connection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    p.add_argument("--ca", type=Path, help="the federation's CA certificate (TLS)")
    p.add_argument("--insecure", action="store_true", help="no TLS, to a SuperLink started --insecure (debugging only)")


def main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    if importlib.util.find_spec("flwr") is None:
        raise UserError(
            "Flower is not installed in this environment",
            "run radfusion federate from .venv-federate (make federate-venv: Flower's pins need their own)",
        )
    if hasattr(args, "superlink") and args.ca is None and not args.insecure:
        raise UserError("no --ca", "give the federation's ca.crt (or --insecure, to a SuperLink started --insecure)")
    if getattr(args, "ca", None) is not None and not args.ca.is_file():
        raise UserError(f"--ca {args.ca} is not a file", "give the ca.crt of radfusion federate keys")
    try:
        args.func(args)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:  # a run or a Flower process that failed
        where = getattr(args, "out", None) or getattr(args, "work", None) or getattr(args, "state", None)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(first, f"the logs are under {where}" if where else "see Flower's output above") from exc
    sys.stdout.flush()
