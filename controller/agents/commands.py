"""The command line's client commands: `conductor status|health|params|plan|up|...`.

Each is a thin shell over `client.Client` (HTTP to a running conductor, maybe remote):
tables for people, `--output json` for scripts, and exit codes a script can branch on.
An error is one line (the contract's code, its message, a hint), never a traceback
(`--debug` shows it). Configuration (URL, token) comes from the flags, else
CONDUCTOR_URL / CONDUCTOR_TOKEN, read once from the environment the CLI hands in.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from controller.agents.client import ApiError, Client, ClientSettings

EXIT_OK = 0
EXIT_FAILED = 1  # the API answered an error, or a service is unhealthy
EXIT_USAGE = 2  # argparse's own, and unreadable input files
EXIT_UNREACHABLE = 3  # no conductor answered at --url
EXIT_TIMEOUT = 4  # not healthy (or not done) before the deadline
EXIT_CODES = (f"Exit codes: {EXIT_OK} success, {EXIT_FAILED} failed (an error answer, or "
              f"unhealthy), {EXIT_USAGE} usage, {EXIT_UNREACHABLE} conductor unreachable, "
              f"{EXIT_TIMEOUT} timed out.")
FOLLOW_RECONNECTS = 1000  # a --follow that keeps losing its connection gives up eventually

COMMANDS = ("status", "instances", "services", "health", "events", "params", "plan", "up",
            "update", "down", "history", "rollback", "suspend", "resume", "wait")


class UsageError(Exception):
    """Bad input the API never saw (an unreadable file, JSON that does not parse)."""


def add_commands(sub: Any) -> None:
    """Register the client commands on the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="conductor API (default: $CONDUCTOR_URL, "
                        "http://127.0.0.1:8081)")
    common.add_argument("--token", help="bearer token (default: $CONDUCTOR_TOKEN)")
    common.add_argument("--instance", help="DeploymentParameters instance (default: the "
                        "controller's)")
    common.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for an answer (wait/--wait: for health)")
    read = argparse.ArgumentParser(add_help=False)
    read.add_argument("-o", "--output", choices=["text", "json"], default="text")

    def add(name: str, help: str, *parents: argparse.ArgumentParser) -> Any:
        return sub.add_parser(name, help=help, description=f"{help}. {EXIT_CODES}",
                              parents=[common, *parents])

    add("status", "controller status: leader, source, last pass", read)
    add("instances", "DeploymentParameters instances", read)
    add("services", "services of the app", read)
    h = add("health", "health of the services (exit 1 when one is unhealthy)", read)
    h.add_argument("service", nargs="?")
    e = add("events", "events, newest first (--follow streams them)", read)
    e.add_argument("--type", choices=["error", "warning", "info", "success"])
    e.add_argument("--service")
    e.add_argument("--resource", help="namespace/Kind/name")
    e.add_argument("--since", help="RFC 3339 time or a duration back (15m, 2h)")
    e.add_argument("--limit", type=int, default=20)
    e.add_argument("-f", "--follow", action="store_true", help="stream new events")
    p = add("params", "read or change the parameters")
    psub = p.add_subparsers(dest="params_command", required=True, metavar="ACTION")
    g = psub.add_parser("get", help="the parameters in force (or one service's values)",
                        parents=[common, read])
    g.add_argument("service", nargs="?")
    s = psub.add_parser("set", help="replace the parameters with a YAML/JSON file",
                        parents=[common, read])
    s.add_argument("file", type=Path)
    s.add_argument("--if-match", help="the version you read (default: the version read "
                   "just before writing)")
    pa = psub.add_parser("patch", help="JSON merge patch of the parameters",
                         parents=[common, read])
    pa.add_argument("patch", help="the patch as JSON, or @FILE")
    pa.add_argument("--if-match", help="the version you read")
    pl = add("plan", "what up/update would change, with per-object diffs (writes nothing)",
             read)
    pl.add_argument("services", nargs="*")
    draft = pl.add_mutually_exclusive_group()
    draft.add_argument("--params", type=Path, help="plan a whole draft spec (YAML/JSON)")
    draft.add_argument("--patch", help="plan a merge patch (JSON, or @FILE)")
    draft.add_argument("--ref", help="plan a Git ref (Git source)")
    for op, what in (("up", "deploy"), ("update", "re-read the parameters and apply"),
                     ("down", "remove")):
        d = add(op, f"{what} services (all when none named)", read)
        d.add_argument("services", nargs="*")
        d.add_argument("--wait", "--wait-healthy", action="store_true", dest="wait",
                       help="wait until healthy (exit 1 with the reason when one is "
                       "unhealthy)")
        d.add_argument("--if-match", help="only if the parameters are at this version")
    hi = add("history", "recorded parameter revisions", read)
    hi.add_argument("--limit", type=int, default=20)
    r = add("rollback", "restore a recorded parameters revision", read)
    r.add_argument("revision")
    r.add_argument("--if-match", help="only if the parameters are at this version")
    add("suspend", "apply and prune nothing until resumed", read)
    add("resume", "resume a suspended instance", read)
    w = add("wait", "wait until the services are healthy (default timeout 300 s)", read)
    w.add_argument("services", nargs="*")


def run(args: argparse.Namespace, env: Mapping[str, str], out: TextIO = sys.stdout) -> int:
    """Run one client command; returns its exit code."""
    name = args.command
    try:
        client = Client(ClientSettings.from_env(env, args.url, args.token,
                                                None if name == "wait" or getattr(
                                                    args, "wait", False) else args.timeout),
                        instance=args.instance)
        code: int = HANDLERS[name](client, args, out)
        return code
    except ApiError as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        say(f"conductor {name}: {one_line(e)}")
        return EXIT_UNREACHABLE if e.code == "unreachable" else \
            EXIT_TIMEOUT if e.code == "timeout" else EXIT_FAILED
    except UsageError as e:
        say(f"conductor {name}: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def one_line(e: ApiError) -> str:
    line = f"{e.code}: {e.message}"
    facts = [f"{k}={e.details[k]}" for k in ("resource", "error", "current", "path", "field")
             if isinstance(e.details.get(k), str | int)]
    if facts:
        line += f" ({', '.join(facts)})"
    if e.hint:
        line += f"; hint: {e.hint}"
    if e.retryable:
        line += " [retryable]"
    return line.replace("\n", " ")


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def emit(args: argparse.Namespace, out: TextIO, body: Any,
         text: Callable[[Any], str]) -> None:
    if getattr(args, "output", "text") == "json":
        out.write(json.dumps(body, indent=2, sort_keys=True) + "\n")
    else:
        out.write(text(body).rstrip("\n") + "\n")


def table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> str:
    cells = [[str(c) for c in head], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def load_document(source: str | Path) -> Any:
    """A YAML or JSON document from a file (a Path, or "@file"), or JSON text."""
    try:
        if isinstance(source, Path) or source.startswith("@"):
            path = Path(str(source).removeprefix("@")) if isinstance(source, str) else source
            return yaml.safe_load(path.read_text())
        return json.loads(source)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise UsageError(f"cannot read {source}: {e}") from e


# -- handlers ------------------------------------------------------------------------------


def _status(c: Client, args: argparse.Namespace, out: TextIO) -> int:
    def text(b: Any) -> str:
        last = b.get("lastPass") or {}
        lines = [f"instance: {b.get('namespace')}/{b.get('instance')}",
                 f"leader:   {json.dumps(b.get('leader'))}",
                 f"source:   {json.dumps(b.get('source'))}",
                 f"last pass: {json.dumps(last)}"]
        lines += [f"error: {e.get('message', e)}" for e in (b.get("recentErrors") or [])[:5]]
        return "\n".join(lines)
    emit(args, out, c.status().body, text)
    return EXIT_OK


def _instances(c: Client, args: argparse.Namespace, out: TextIO) -> int:
    emit(args, out, c.instances().body, lambda b: table(
        [(i.get("name"), i.get("namespace"), i.get("ready"), i.get("lastAppliedRevision"),
          "*" if i.get("default") else "") for i in b.get("instances", [])],
        ("NAME", "NAMESPACE", "READY", "REVISION", "DEFAULT")))
    return EXIT_OK


def _services(c: Client, args: argparse.Namespace, out: TextIO) -> int:
    emit(args, out, c.services().body, lambda b: table(
        [(s.get("name"), s.get("namespace"), s.get("deployed"), s.get("status"))
         for s in b.get("services", [])], ("NAME", "NAMESPACE", "DEPLOYED", "STATUS")))
    return EXIT_OK


def health_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [table([(s.get("name"), s.get("namespace"), s.get("status"), s.get("reason", ""))
                    for s in rows], ("SERVICE", "NAMESPACE", "STATUS", "REASON"))]
    for s in rows:
        for o in s.get("objects") or []:
            lines.append(f"  {s.get('name')}: {o.get('resource')}: {o.get('reason')} "
                         f"{o.get('message', '')}".rstrip())
        if s.get("hint") and s.get("status") not in ("healthy", "down"):
            lines.append(f"  {s.get('name')}: hint: {s['hint']}")
    return "\n".join(lines)


def _health(c: Client, args: argparse.Namespace, out: TextIO) -> int:
    if args.service:
        body = c.service(args.service).body
        rows = [body.get("health") or {}]
        emit(args, out, body, lambda _: health_table(rows))
    else:
        body = c.services_health().body
        rows = body.get("services", [])
        emit(args, out, body, lambda _: health_table(rows))
    return EXIT_FAILED if any(s.get("status") == "unhealthy" for s in rows) else EXIT_OK


def event_line(e: Mapping[str, Any]) -> str:
    where = e.get("resource") or e.get("service") or "-"
    reason = f" {e['reason']}:" if e.get("reason") else ""
    return f"{e.get('timestamp', '')} {str(e.get('type', '')).upper():7} {where}{reason} " \
           f"{e.get('message', '')}"


def _events(c: Client, args: argparse.Namespace, out: TextIO) -> int:
    if not args.follow:
        body = c.events(type=args.type, service=args.service, resource=args.resource,
                        since=args.since, limit=args.limit).body
        emit(args, out, body, lambda b: "\n".join(event_line(e) for e in b.get("events", []))
             or "no events")
        return EXIT_OK
    last = ""
    for attempt in range(FOLLOW_RECONNECTS):
        try:
            for event in c.stream_events(type=args.type, service=args.service,
                                         since=args.since, limit=args.limit,
                                         last_event_id=last or None):
                last = str(event.get("id") or last)
                out.write((json.dumps(event, sort_keys=True) if args.output == "json"
                           else event_line(event)) + "\n")
                out.flush()
        except ApiError as e:
            if (not e.retryable and e.code != "unreachable") or attempt == FOLLOW_RECONNECTS - 1:
                raise
        time.sleep(min(2.0 ** min(attempt, 5) / 4, 5.0))  # the server ended it: reconnect
    return EXIT_OK


def _params(c: Client, args: argparse.Namespace, out: TextIO) -> int:
    action = args.params_command
    if action == "get":
        reply = c.get_parameters(args.service)
        if args.output == "json":
            emit(args, out, {"version": reply.version, "parameters": reply.body}, str)
        else:
            out.write(f"# version: {reply.version}\n" if reply.version else "")
            out.write(yaml.safe_dump(reply.body, sort_keys=False))
        return EXIT_OK
    if action == "set":
        spec = load_document(args.file)
        if not isinstance(spec, dict):
            raise UsageError(f"{args.file}: not a mapping with global/services")
        version = args.if_match or c.get_parameters().version
        reply = c.set_parameters(spec, if_match=version)
    else:
        patch = load_document(args.patch)
        if not isinstance(patch, dict):
            raise UsageError("the patch must be a JSON object")
        version = args.if_match or c.get_parameters().version
        reply = c.patch_parameters(patch, if_match=version)
    body = {**reply.body, "version": reply.version}
    emit(args, out, body, lambda b: f"{b.get('message')} (version {b.get('version')}, "
                                    f"revision {b.get('revision')})")
    return EXIT_OK


def plan_text(b: Mapping[str, Any]) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted((b.get("counts") or {}).items()))
    what = "a draft" if b.get("draft") else "the parameters in force"
    lines = [f"plan {b.get('planId', '-')} of {what} (based on {b.get('basedOn', '-')}, "
             f"expires {b.get('expiresAt', '-')}): {counts or 'no changes'}"]
    for ch in b.get("changes") or []:
        if ch.get("action") == "unchanged":
            continue
        lines.append(f"{ch.get('action'):8} {ch.get('resource')} ({ch.get('reason', '')})")
        if ch.get("error"):
            lines.append(f"  error: {json.dumps(ch['error'])}")
        lines.extend(f"  {line}" for line in str(ch.get("diff") or "").splitlines())
    if b.get("suspended"):
        lines.append("the instance is suspended: nothing is applied until resumed")
    return "\n".join(lines)


def _plan(c: Client, args: argparse.Namespace, out: TextIO) -> int:
    params = load_document(args.params) if args.params else None
    patch = load_document(args.patch) if args.patch else None
    body = c.plan(args.services, parameters=params, patch=patch, ref=args.ref).body
    emit(args, out, body, plan_text)
    return EXIT_OK


def _deploy(c: Client, args: argparse.Namespace, out: TextIO) -> int:
    health_timeout = args.timeout if args.timeout is not None else 300.0
    reply = c.deploy(args.command, args.services, wait_healthy=args.wait,
                     health_timeout=health_timeout if args.wait else None,
                     if_match=args.if_match)

    def text(b: Any) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted((b.get("counts") or {}).items()))
        lines = [f"{b.get('message')}" + (f" ({counts})" if counts else "")]
        lines += [f"  failed {r.get('resource')}: {r.get('reason') or r.get('error')}"
                  for r in b.get("results") or [] if r.get("result") == "failed"]
        lines += [f"  {n}: {h.get('status')}" for n, h in (b.get("health") or {}).items()
                  if isinstance(h, dict)]
        return "\n".join(lines)

    emit(args, out, reply.body, text)
    if reply.status == 202:  # still running, or applied and not yet healthy
        return EXIT_TIMEOUT if args.wait else EXIT_OK
    return EXIT_OK


def _history(c: Client, args: argparse.Namespace, out: TextIO) -> int:
    emit(args, out, c.history(args.limit).body, lambda b: table(
        [(h.get("revision"), h.get("recordedAt") or h.get("timestamp"), h.get("applied"))
         for h in b.get("history", [])], ("REVISION", "RECORDED", "APPLIED")))
    return EXIT_OK


def _rollback(c: Client, args: argparse.Namespace, out: TextIO) -> int:
    reply = c.rollback(args.revision, if_match=args.if_match)
    emit(args, out, {**reply.body, "version": reply.version},
         lambda b: f"{b.get('message')} (version {b.get('version')})")
    return EXIT_OK


def _suspend(c: Client, args: argparse.Namespace, out: TextIO) -> int:
    body = (c.suspend() if args.command == "suspend" else c.resume()).body
    emit(args, out, body, lambda b: str(b.get("message")))
    return EXIT_OK


def _wait(c: Client, args: argparse.Namespace, out: TextIO) -> int:
    ok, rows = c.wait_healthy(args.services, args.timeout if args.timeout is not None
                              else 300.0)
    emit(args, out, {"healthy": ok, "services": rows}, lambda _: health_table(rows))
    if not ok:
        say("conductor wait: not healthy before the deadline" + "".join(
            f"; {s.get('name')}: {s.get('status')} {s.get('reason', '')}".rstrip()
            for s in rows if s.get("status") != "healthy"))
    return EXIT_OK if ok else EXIT_TIMEOUT


HANDLERS: dict[str, Callable[[Client, argparse.Namespace, TextIO], int]] = {
    "status": _status, "instances": _instances, "services": _services, "health": _health,
    "events": _events, "params": _params, "plan": _plan, "up": _deploy, "update": _deploy,
    "down": _deploy, "history": _history, "rollback": _rollback, "suspend": _suspend,
    "resume": _suspend, "wait": _wait}


def completion_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for `parser`: subcommands, their subcommands and flags."""
    def words(p: argparse.ArgumentParser) -> tuple[list[str], dict[str, argparse.ArgumentParser]]:
        flags = [o for a in p._actions for o in a.option_strings]
        subs: dict[str, argparse.ArgumentParser] = {}
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                subs.update(a.choices)
        return flags, subs

    top_flags, subs = words(parser)
    cases = []
    for name, sp in sorted(subs.items()):
        flags, inner = words(sp)
        cases.append(f"    {name}) opts=\"{' '.join(sorted(inner))} {' '.join(flags)}\";;")
        for inner_name, isp in sorted(inner.items()):
            iflags, _ = words(isp)
            cases.append(f"    {name}/{inner_name}) opts=\"{' '.join(iflags)}\";;")
    return "\n".join([
        "# bash completion for conductor: eval \"$(conductor completion bash)\"",
        "_conductor() {",
        "  local cur=${COMP_WORDS[COMP_CWORD]} key=\"\" i opts",
        "  for ((i = 1; i < COMP_CWORD; i++)); do",
        "    case ${COMP_WORDS[i]} in -*) ;; *) key=${key:+$key/}${COMP_WORDS[i]};; esac",
        "  done",
        "  case $key in",
        f"    \"\") opts=\"{' '.join(sorted(subs))} {' '.join(top_flags)}\";;",
        *cases,
        "    */*/*|*) case ${key%%/*} in",
        *[f"      {n}) opts=\"{' '.join(words(sp)[0])}\";;" for n, sp in sorted(subs.items())],
        "      esac;;",
        "  esac",
        "  mapfile -t COMPREPLY < <(compgen -W \"$opts\" -f -- \"$cur\")",
        "}",
        "complete -o default -F _conductor conductor", ""])
